"""The frame every page shares: header with navigation, language and theme switches, sign-in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nicegui import run, ui

from cotrain.server.permissions import Action, allowed
from cotrain.ui import prefs, theme
from cotrain.ui.context import platform
from cotrain.ui.i18n import t, use_language

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

NAV = (("sessions", "/", "view_list"), ("models", "/models", "compare"), ("network", "/network", "hub"),
       ("rewards", "/rewards", "paid"))

# Admin pages (issue 11): an entry shows only to actors whose role may do its action; the page
# itself refuses everyone else too.
ADMIN_NAV = (("users", "/users", "manage_accounts", Action.USERS_READ),
             ("audit", "/audit", "fact_check", Action.AUDIT_READ))


def nav_items(actor: Actor | None) -> tuple[tuple[str, str, str], ...]:
    """The navigation entries `actor` sees: everyone's, then the admin pages its role may open."""
    return NAV + tuple((key, target, icon) for key, target, icon, action in ADMIN_NAV if allowed(actor, action))


@dataclass
class Page:
    body: ui.column
    actor: Actor | None


async def frame(active: str) -> Page:
    """Build the header and return the page's content column and the signed-in actor."""
    use_language(prefs.language())
    await _sign_in_from_link()
    actor = await run.io_bound(prefs.actor_for, prefs.token())
    if actor is None and prefs.token():
        prefs.set_token(None)  # revoked since: forget it
    theme.apply(prefs.dark())
    ui.page_title(f"{t('nav.' + active)} · CoTrain")
    ui.query("html").props(f'lang="{prefs.language()}"')
    with ui.header().classes("items-center justify-between px-6 py-2 bg-primary text-white").props("elevated=false"):
        with ui.row().classes("items-center gap-6 no-wrap"):
            with ui.link(target="/").classes("row items-center gap-2 no-wrap text-white no-underline"):
                ui.html(theme.LOGO, sanitize=False)
                ui.label("CoTrain").classes("text-lg font-semibold tracking-tight")
            with ui.row().classes("ct-nav gap-1 no-wrap"):
                for key, target, icon in nav_items(actor):
                    button = ui.button(t(f"nav.{key}"), icon=icon,
                                       on_click=lambda target=target: ui.navigate.to(target))
                    button.props(f'flat dense no-caps color=white padding="4px 12px" data-testid="nav-{key}"')
                    if key == active:
                        button.classes("ct-active")
        with ui.row().classes("items-center gap-1 no-wrap"):
            _language_menu()
            _theme_button()
            _account(actor)
    body = ui.column().classes("ct-page gap-5")
    return Page(body=body, actor=actor)


async def _sign_in_from_link() -> None:
    """`/?token=...` (the link `cotrain up` suggests on first start) is exchanged once, here on the
    server, for this browser's sign-in (kept sealed, `cotrain.ui.sealed`). The first thing the page
    runs, before anything else loads, drops the token from the address bar and from its history
    entry, and no Referer carries it."""
    request = ui.context.client.request
    token = request.query_params.get("token")
    if not token:
        return
    ui.add_head_html('<meta name="referrer" content="no-referrer">'
                     "<script>history.replaceState(null, '', location.pathname + location.search"
                     ".replace(/([?&])token=[^&]*&?/, '$1').replace(/[?&]$/, '') + location.hash)</script>")
    if await run.io_bound(prefs.actor_for, token) is not None:
        prefs.set_token(token)


def _language_menu() -> None:
    def choose(code: str) -> None:
        prefs.set_language(code)
        ui.navigate.reload()

    with ui.button(prefs.LANGUAGES[prefs.language()], icon="translate").props(
        'flat dense no-caps color=white data-testid="language"'
    ):
        with ui.menu():
            for code, name in prefs.LANGUAGES.items():
                ui.menu_item(name, on_click=lambda code=code: choose(code)).props(f'data-testid="lang-{code}"')


def _theme_button() -> None:
    async def toggle() -> None:
        shown_dark = await ui.run_javascript("return document.body.classList.contains('body--dark')")
        prefs.set_dark(not shown_dark)
        ui.dark_mode(not shown_dark)
        button.props(f"icon={'light_mode' if not shown_dark else 'dark_mode'}")

    button = ui.button(icon="light_mode" if prefs.dark() else "dark_mode", on_click=toggle)
    label = f"{t('theme.dark')} / {t('theme.light')}"
    button.props(f'flat round dense color=white aria-label="{label}" data-testid="theme"')
    button.tooltip(t("theme.switch"))


def _account(actor: Actor | None) -> None:
    if actor is not None:
        with ui.button(actor.name, icon="account_circle").props('flat dense no-caps color=white data-testid="account"'):
            with ui.menu():
                ui.menu_item(t("auth.sign_out"), on_click=_sign_out)
        return
    ui.button(t("auth.sign_in"), icon="login", on_click=sign_in_dialog).props(
        'outline dense no-caps color=white padding="4px 12px" data-testid="sign-in"'
    )


def _sign_out() -> None:
    prefs.set_token(None)
    ui.navigate.reload()


def sign_in_dialog() -> None:
    path = platform().settings.layout.root / "admin-token"
    with ui.dialog() as dialog, ui.card().classes("w-[460px] gap-3 p-6"):
        ui.label(t("auth.title")).classes("text-lg font-semibold")
        ui.label(t("auth.hint", path=path)).classes("text-sm ct-muted")
        field = ui.input(t("auth.token"), password=True).classes("w-full").props('outlined data-testid="token-input"')

        async def submit() -> None:
            actor = await run.io_bound(prefs.actor_for, (field.value or "").strip())
            if actor is None:
                field.props(f'error error-message="{t("auth.invalid")}"')
                return
            prefs.set_token(field.value.strip())
            dialog.close()
            ui.navigate.reload()

        field.on("keydown.enter", submit)
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button(t("common.cancel"), on_click=dialog.close).props("flat no-caps")
            ui.button(t("auth.sign_in"), on_click=submit).props('unelevated no-caps data-testid="token-submit"')
    dialog.open()


def page_title(title: str, subtitle: str | None = None) -> ui.row:
    """The page's heading row; returns the row so pages can add actions on the right."""
    with ui.row().classes("w-full items-end justify-between no-wrap") as row:
        with ui.column().classes("gap-1"):
            ui.label(title).classes("text-2xl font-semibold tracking-tight")
            if subtitle:
                ui.label(subtitle).classes("text-sm ct-muted")
    return row


def empty_state(icon: str, title: str, hint: str) -> ui.column:
    with ui.column().classes("w-full items-center py-12 gap-2") as column:
        ui.icon(icon, size="48px").classes("ct-muted")
        ui.label(title).classes("text-lg font-medium")
        ui.label(hint).classes("text-sm ct-muted text-center max-w-md")
    return column
