"""Users (admins only): every signed-in wallet and API token with its role, a role selector and
revoke / ban / lift-ban per user. Everyone else gets a "not allowed" page; the nav entry only
shows to admins (layout.ADMIN_NAV)."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from cotrain.server.permissions import Action, allowed
from cotrain.ui import audit_data, prefs, users_data
from cotrain.ui.blocking import run_blocking
from cotrain.ui.components.tables import localized
from cotrain.ui.i18n import t
from cotrain.ui.layout import empty_state, frame, page_title, sign_in_dialog

USER_SLOT = r"""
<q-td :props="props">
  <div class="row items-center no-wrap q-gutter-x-sm">
    <span class="font-medium" :class="props.row.kind === 'wallet' ? 'ct-mono text-[13px]' : ''"
          :title="props.row.ref">{{ props.row.label }}</span>
    <q-badge v-if="props.row.me" rounded outline color="primary" :label="%(you)s" />
  </div>
  <div v-if="props.row.detail" class="ct-mono text-[11px] ct-muted">{{ props.row.detail }}</div>
</q-td>"""
ROLE_SLOT = r"""
<q-td :props="props">
  <q-select dense outlined options-dense emit-value map-options style="min-width: 150px"
            :model-value="props.row.role" :options='%(options)s' :disable="props.row.status === 'revoked'"
            :data-testid="'role-' + props.row.ref"
            @update:model-value="v => $parent.$emit('role', {ref: props.row.ref, role: v})" />
</q-td>"""
STATUS_SLOT = r"""
<q-td :props="props">
  <q-badge rounded :color="props.row.status_color" :label="props.row.status_label" class="px-2 py-1"
           :data-testid="'status-' + props.row.ref" />
</q-td>"""
ACTIONS_SLOT = r"""
<q-td :props="props" class="text-right">
  <q-btn v-if="props.row.status === 'banned'" flat dense no-caps color="primary" icon="lock_open" :label="%(unban)s"
         :data-testid="'unban-' + props.row.ref" @click="() => $parent.$emit('unban', props.row)" />
  <q-btn v-else-if="props.row.status === 'active'" flat dense no-caps color="negative" icon="block" :label="%(revoke)s"
         :data-testid="'revoke-' + props.row.ref" @click="() => $parent.$emit('revoke', props.row)" />
</q-td>"""


def _columns() -> list[dict[str, Any]]:
    def col(name: str, field: str, align: str = "left", sortable: bool = True) -> dict[str, Any]:
        return {"name": name, "label": t(f"users.col.{name}"), "field": field, "align": align, "sortable": sortable}

    return [col("user", "ref"), col("kind", "kind_label"), col("role", "role"), col("status", "status_label"),
            col("created", "created", sortable=False), col("last_login", "last_login", sortable=False),
            col("actions", "status", align="right", sortable=False)]


def _js(value: Any) -> str:
    """A value inside a double-quoted Vue attribute."""
    return json.dumps(value).replace('"', "&quot;")


@ui.page("/users")
async def users_page() -> None:
    page = await frame("users")
    ui.add_css(".ct-users tbody tr { cursor: default; }")  # rows are not links here
    token = prefs.token()
    client_ip = audit_data.client_ip()
    with page.body:
        page_title(t("users.title"), t("users.subtitle"))
        if not allowed(page.actor, Action.USERS_READ):
            _not_allowed(page.actor is None)
            return
        with ui.card().classes("ct-card w-full p-0 gap-0").props("flat"):
            with ui.row().classes("w-full items-center gap-3 px-4 pt-4 pb-2 no-wrap"):
                search = ui.input(placeholder=t("users.search")).props(
                    'outlined dense clearable data-testid="user-search"').classes("w-72")
                with search.add_slot("prepend"):
                    ui.icon("search")
                roles = {"": t("users.all"), **{o["value"]: o["label"] for o in users_data.role_options()}}
                role_filter = ui.select(roles, value="", label=t("users.role_filter")).props(
                    'outlined dense options-dense data-testid="role-filter"').classes("w-44")
                kinds = {"": t("users.all"), "wallet": t("users.kind.wallet"), "token": t("users.kind.token")}
                kind_filter = ui.select(kinds, value="", label=t("users.kind_filter")).props(
                    'outlined dense options-dense data-testid="kind-filter"').classes("w-40")
            table = ui.table(columns=_columns(), rows=[], row_key="ref", pagination={"rowsPerPage": 25, "sortBy": None})
            localized(table).classes("ct-table ct-users w-full").props('flat data-testid="users-table"')
            table.add_slot("body-cell-user", USER_SLOT % {"you": _js(t("users.you"))})
            table.add_slot("body-cell-role", ROLE_SLOT % {"options": json.dumps(users_data.role_options())})
            table.add_slot("body-cell-status", STATUS_SLOT)
            table.add_slot("body-cell-actions", ACTIONS_SLOT % {"unban": _js(t("users.unban")),
                                                                "revoke": _js(t("users.revoke"))})
            search.bind_value_to(table, "filter")
            footer = ui.label().classes("text-sm ct-muted px-4 pb-3")
            empty = ui.column().classes("w-full")

    async def refresh() -> None:
        views, total = await run_blocking(users_data.load, role_filter.value or None, kind_filter.value or None)
        table.rows = users_data.rows_of(views, page.actor.token_id if page.actor else None)
        table.update()
        table.set_visibility(bool(views))
        footer.set_text(t("users.more", shown=len(views), total=total) if total > len(views) else "")
        footer.set_visibility(total > len(views))
        empty.clear()
        if not views:
            with empty:
                empty_state("person_search", t("users.empty"), "")

    async def done(outcome: users_data.Outcome, action: str, ban: bool | None = None) -> None:
        if outcome.view is None:
            ui.notify(outcome.error, type="negative", multi_line=True)
        else:
            ui.notify(users_data.done_message(outcome.view, action, ban), type="positive")
        await refresh()  # also puts a refused role selector back

    async def on_role(e: Any) -> None:
        outcome = await run_blocking(users_data.set_role, token, e.args["ref"], e.args["role"], client_ip)
        await done(outcome, "role")

    async def on_unban(e: Any) -> None:
        await done(await run_blocking(users_data.revoke, token, e.args["ref"], False, client_ip), "revoke", False)

    def on_revoke(e: Any) -> None:
        row = e.args
        with ui.dialog() as dialog, ui.card().classes("w-[480px] gap-3 p-6"):
            ui.label(t("users.revoke_title", user=row["label"])).classes("text-lg font-semibold")
            wallet = row["kind"] == "wallet"
            ui.label(t("users.revoke_wallet_hint" if wallet else "users.revoke_token_hint")).classes("text-sm ct-muted")
            ban = ui.checkbox(t("users.ban")).props('data-testid="revoke-ban"') if wallet else None

            async def confirm() -> None:
                dialog.close()
                wanted = True if ban is not None and ban.value else None
                outcome = await run_blocking(users_data.revoke, token, row["ref"], wanted, client_ip)
                await done(outcome, "revoke", wanted)

            with ui.row().classes("w-full justify-end gap-2"):
                ui.button(t("common.cancel"), on_click=dialog.close).props("flat no-caps")
                ui.button(t("users.revoke"), icon="block", on_click=confirm).props(
                    'unelevated no-caps color=negative data-testid="revoke-confirm"')
        dialog.open()

    table.on("role", on_role)
    table.on("revoke", on_revoke)
    table.on("unban", on_unban)
    role_filter.on_value_change(refresh)
    kind_filter.on_value_change(refresh)
    await refresh()


def _not_allowed(anonymous: bool) -> None:
    with ui.card().classes("ct-card w-full").props('flat data-testid="not-allowed"'):
        with empty_state("lock", t("users.not_allowed"),
                         t("users.sign_in_hint") if anonymous else t("users.not_allowed_hint")):
            if anonymous:
                ui.button(t("auth.sign_in"), icon="login", on_click=sign_in_dialog).props(
                    "unelevated no-caps").classes("mt-2")
