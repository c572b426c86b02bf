"""Audit (admins only): the hash-chained audit log, newest first, filterable, with a button that
checks the chain. Everyone else gets a "not allowed" page (and no nav entry)."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from cotrain.server.permissions import Action, allowed
from cotrain.ui import audit_data
from cotrain.ui import format as fmt
from cotrain.ui.blocking import run_blocking
from cotrain.ui.components.tables import localized
from cotrain.ui.i18n import t
from cotrain.ui.layout import empty_state, frame, page_title

OUTCOME_COLORS = {"ok": "positive", "refused": "amber-8", "failed": "negative"}
OUTCOME_SLOT = r"""
<q-td :props="props">
  <q-badge rounded :color="props.row.outcome_color" :label="props.row.outcome_label" class="px-2 py-1" />
</q-td>"""
ACTOR_SLOT = r"""
<q-td :props="props">
  <div class="ct-mono text-[12px]" :title="props.row.actor">{{ props.row.actor_short }}</div>
  <div class="text-[11px] ct-muted">{{ props.row.role }}</div>
</q-td>"""
DETAIL_SLOT = r"""
<q-td :props="props" style="max-width: 320px; white-space: normal">
  <div class="text-[12px] ct-muted" :title="props.row.detail_full"
       style="word-break: break-word; display: -webkit-box; -webkit-line-clamp: 2;
              -webkit-box-orient: vertical; overflow: hidden">
    {{ props.row.detail_text }}</div>
</q-td>"""


def _columns() -> list[dict[str, Any]]:
    def col(name: str, align: str = "left", classes: str = "") -> dict[str, Any]:
        return {"name": name, "label": t(f"audit.col.{name}"), "field": name, "align": align, "classes": classes}

    return [
        col("id", "right", "ct-muted"), col("time", classes="whitespace-nowrap"), col("actor"),
        col("action", classes="ct-mono text-[12px]"), col("target", classes="ct-mono text-[12px]"), col("outcome"),
        col("client_ip", classes="ct-mono text-[12px]"), col("request_id", classes="ct-mono text-[11px] ct-muted"),
        col("detail"),
    ]


def _short(text: str, keep: int = 18) -> str:
    return text if len(text) <= keep else text[: keep - 7] + "…" + text[-6:]


def _detail_text(detail: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    keys = sorted((k for k in detail if k not in ("method", "httpStatus", "via")), key=lambda k: k != "reason")
    parts = [f"{k}: {shown(detail[k])}" for k in keys]  # why it was refused first
    status = detail.get("httpStatus")
    return " · ".join(([f"HTTP {status}"] if status else []) + parts)


def to_row(entry: dict[str, Any]) -> dict[str, Any]:
    text = _detail_text(entry["detail"])
    return {
        **entry,
        "time": fmt.clock(entry["time"]),
        "actor_short": _short(entry["actor"], 22),
        "target": _short(entry["target"], 22) if entry["target"] else "—",
        "client_ip": entry["client_ip"] or "—",
        "request_id": _short(entry["request_id"], 14),
        "outcome_label": t(f"audit.outcome.{entry['outcome']}") if entry["outcome"] in OUTCOME_COLORS
        else entry["outcome"],
        "outcome_color": OUTCOME_COLORS.get(entry["outcome"], "grey-6"),
        "detail_text": text,
        "detail_full": text,
    }


@ui.page("/audit")
async def audit_page() -> None:
    page = await frame("audit")
    with page.body:
        header = page_title(t("audit.title"), t("audit.subtitle"))
        if not allowed(page.actor, Action.AUDIT_READ):
            with ui.card().classes("ct-card w-full").props('flat data-testid="audit-not-allowed"'):
                empty_state("lock", t("audit.not_allowed"), t("audit.not_allowed_hint"))
            return
        result = ui.column().classes("w-full gap-0").props('data-testid="verify-result"')
        with ui.card().classes("ct-card w-full p-0 gap-0").props("flat"):
            with ui.row().classes("w-full items-center gap-3 px-4 pt-4 pb-2"):
                actor = _text_filter(t("audit.filter.actor"), "filter-actor", "w-56")
                action = _text_filter(t("audit.filter.action"), "filter-action", "w-56")
                action.props('placeholder="session.*"')
                target = _text_filter(t("audit.filter.target"), "filter-target", "w-48")
                outcomes = {"": t("sessions.all"), **{o: t(f"audit.outcome.{o}") for o in OUTCOME_COLORS}}
                outcome = ui.select(outcomes, value="", label=t("audit.filter.outcome")).props(
                    'outlined dense options-dense data-testid="filter-outcome"').classes("w-36")
                spans = {"": t("audit.since.any"), **{k: t(f"audit.since.{k}") for k in audit_data.SINCE_S}}
                since = ui.select(spans, value="", label=t("audit.filter.since")).props(
                    'outlined dense options-dense data-testid="filter-since"').classes("w-40")
                ui.space()
                count = ui.label("").classes("text-sm ct-muted").props('data-testid="audit-count"')
            table = ui.table(columns=_columns(), rows=[], row_key="id", pagination={"rowsPerPage": 25})
            localized(table).classes("ct-table w-full").props('flat dense data-testid="audit-table"')
            table.add_slot("body-cell-outcome", OUTCOME_SLOT)
            table.add_slot("body-cell-actor", ACTOR_SLOT)
            table.add_slot("body-cell-detail", DETAIL_SLOT)
            empty = ui.column().classes("w-full")

    async def refresh(*_: Any) -> None:
        data = await run_blocking(audit_data.load, (actor.value or "").strip(), (action.value or "").strip(),
                                  (target.value or "").strip(), outcome.value or None, since.value or None)
        table.rows = [to_row(e) for e in data["rows"]]
        table.update()
        shown = len(data["rows"])
        count.set_text(t("audit.count", shown=shown, total=data["total"]) if shown < data["total"]
                       else t("audit.count_all", total=data["total"]))
        table.set_visibility(bool(shown))
        empty.clear()
        if not shown:
            with empty:
                empty_state("manage_search", t("audit.empty"), "")

    async def check() -> None:
        button.props("loading")
        report = await run_blocking(audit_data.verify)
        button.props(remove="loading")
        _show_verdict(result, report)

    with header:
        button = ui.button(t("audit.verify"), icon="verified_user", on_click=check).props(
            'unelevated no-caps data-testid="verify-chain"')
    for element in (actor, action, target, outcome, since):
        element.on_value_change(refresh)
    await refresh()


def _text_filter(label: str, testid: str, width: str) -> ui.input:
    return ui.input(label).props(f'outlined dense clearable debounce=300 data-testid="{testid}"').classes(width)


def _show_verdict(box: ui.column, report: dict[str, Any]) -> None:
    box.clear()
    intact = report["ok"]
    color = "bg-green-1 text-positive" if intact else "bg-red-1 text-negative"
    with box, ui.card().classes(f"ct-card w-full px-5 py-3 gap-1 {color}").props('flat data-testid="verdict"'):
        with ui.row().classes("items-center gap-2 no-wrap"):
            ui.icon("verified" if intact else "gpp_bad", size="22px")
            if intact:
                ui.label(t("audit.intact", entries=f"{report['entries']:,}")).classes("font-semibold")
            else:
                ui.label(t("audit.broken", id=report["first_bad"])).classes("font-semibold")
        if intact and report["entries"]:
            ui.label(t("audit.head", head=report["head"])).classes("ct-mono text-[12px] ct-muted")
        for problem in report["problems"][:5]:
            ui.label(problem).classes("text-[13px]")
