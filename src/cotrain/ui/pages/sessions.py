"""Sessions: stat tiles, filters and the table of sessions, updated live."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from cotrain.server.message_data import ProgressData, StatusData, parse_message
from cotrain.server.orm import ALL_STATES
from cotrain.ui import format as fmt
from cotrain.ui import live, session_rows
from cotrain.ui.blocking import run_blocking
from cotrain.ui.components.badges import stat_tile, status_label
from cotrain.ui.components.tables import localized
from cotrain.ui.i18n import t
from cotrain.ui.layout import empty_state, frame, page_title
from cotrain.ui.theme import STATUS_COLORS

NAME_SLOT = r"""
<q-td :props="props">
  <div class="font-medium">{{ props.row.name }}</div>
  <div class="ct-mono text-[11px] ct-muted">{{ props.row.id }} · {{ props.row.strategy }}</div>
</q-td>"""
STATUS_SLOT = r"""
<q-td :props="props">
  <q-badge rounded :color="props.row.status_color" :label="props.row.status_label" class="px-2 py-1" />
</q-td>"""
PROGRESS_SLOT = r"""
<q-td :props="props" style="min-width: 150px">
  <div class="row items-center no-wrap q-gutter-x-sm">
    <q-linear-progress rounded size="8px" animation-speed="300" :value="props.row.progress / 100"
                       :color="props.row.status_color" class="col" data-testid="row-progress" />
    <span class="text-[12px] ct-muted" style="width: 38px; text-align: right">
      {{ Math.round(props.row.progress) }}%</span>
  </div>
</q-td>"""


def _columns() -> list[dict[str, Any]]:
    def col(name: str, field: str | None = None, align: str = "left", sortable: bool = True) -> dict[str, Any]:
        return {"name": name, "label": t(f"sessions.col.{name}"), "field": field or name, "align": align,
                "sortable": sortable}

    return [
        col("name"), col("status"), col("model"), col("progress"), col("loss", align="right"),
        col("participants", align="right"), col("owner"), col("age", "age", sortable=False),
    ]


@ui.page("/")
async def sessions_page() -> None:
    page = await frame("sessions")
    state: dict[str, Any] = {"search": "", "status": None, "strategy": None, "dirty": False}
    with page.body:
        with page_title(t("sessions.title"), t("sessions.subtitle")):
            ui.button(t("sessions.new"), icon="add", on_click=lambda: ui.navigate.to("/sessions/new")).props(
                'unelevated no-caps data-testid="new-session"'
            )
        with ui.row().classes("w-full gap-4 no-wrap"):
            tiles = {
                "total": stat_tile(t("sessions.stat.total"), "–", "dataset"),
                "running": stat_tile(t("sessions.stat.running"), "–", "play_circle"),
                "queued": stat_tile(t("sessions.stat.queued"), "–", "schedule"),
                "completed": stat_tile(t("sessions.stat.completed"), "–", "check_circle"),
            }
        with ui.card().classes("ct-card w-full p-0 gap-0").props("flat"):
            with ui.row().classes("w-full items-center gap-3 px-4 pt-4 pb-2 no-wrap"):
                search = ui.input(placeholder=t("sessions.search")).props(
                    'outlined dense clearable debounce=250 data-testid="search"'
                ).classes("w-72")
                with search.add_slot("prepend"):
                    ui.icon("search")
                options: dict[str, str] = {"": t("sessions.all"), **{s: status_label(s) for s in ALL_STATES}}
                status = ui.select(options, value="", label=t("sessions.status_filter")).props(
                    'outlined dense options-dense data-testid="status-filter"'
                ).classes("w-44")
                strategies = {"": t("sessions.all"), "ddp": "DDP", "fsdp": "FSDP", "diloco": "DiLoCo"}
                strategy = ui.select(strategies, value="", label=t("sessions.strategy_filter")).props(
                    'outlined dense options-dense data-testid="strategy-filter"'
                ).classes("w-40")
            table = ui.table(columns=_columns(), rows=[], row_key="id", pagination={"rowsPerPage": 25, "sortBy": None})
            localized(table).classes("ct-table w-full").props('flat data-testid="sessions-table"')
            table.add_slot("body-cell-name", NAME_SLOT)
            table.add_slot("body-cell-status", STATUS_SLOT)
            table.add_slot("body-cell-progress", PROGRESS_SLOT)
            table.on("rowClick", lambda e: ui.navigate.to(f"/sessions/{e.args[1]['id']}"))
            empty = ui.column().classes("w-full")

    by_id: dict[str, dict[str, Any]] = {}

    async def refresh() -> None:
        data = await run_blocking(session_rows.load, page.actor, state["search"], state["status"], state["strategy"])
        rows = session_rows.rows_of(data)
        by_id.clear()
        by_id.update({row["id"]: row for row in rows})
        table.rows = rows
        table.update()
        for key, label in tiles.items():
            label.set_text(str(data["stats"][key]))
        filtered = bool(state["search"] or state["status"] or state["strategy"])
        table.set_visibility(bool(rows))
        empty.clear()
        if not rows:
            with empty:
                if filtered:
                    empty_state("filter_alt_off", t("sessions.no_match"), "")
                else:
                    with empty_state("rocket_launch", t("sessions.empty"), t("sessions.empty_hint")):
                        ui.button(
                            t("sessions.new"), icon="add", on_click=lambda: ui.navigate.to("/sessions/new")
                        ).props("unelevated no-caps").classes("mt-2")

    async def on_search(e: Any) -> None:
        state["search"] = (e.value or "").strip()
        await refresh()

    async def on_status(e: Any) -> None:
        state["status"] = e.value or None
        await refresh()

    async def on_strategy(e: Any) -> None:
        state["strategy"] = e.value or None
        await refresh()

    strategy.on_value_change(on_strategy)
    search.on_value_change(on_search)
    status.on_value_change(on_status)

    async def on_message(message: dict[str, Any]) -> None:
        row = by_id.get(message.get("data", {}).get("sessionId", ""))
        data = None if message["event"] == live.GAP else parse_message(message)
        if message["event"] == live.GAP or (isinstance(data, StatusData) and row is None):
            state["dirty"] = "reload"
            return
        if row is None:
            return
        if isinstance(data, ProgressData):
            row["progress"] = round(data.progress, 1)
            row["loss"] = fmt.metric(data.loss)
            row["participants"] = data.participants or row["participants"]
            state["dirty"] = state["dirty"] or True
        elif isinstance(data, StatusData):
            row["status"] = data.status
            row["status_label"] = status_label(row["status"])
            row["status_color"] = STATUS_COLORS.get(row["status"], "grey-6")
            state["dirty"] = "reload"  # counts per state changed

    async def flush() -> None:
        dirty, state["dirty"] = state["dirty"], False
        if dirty == "reload":
            await refresh()
        elif dirty:
            table.update()

    live.follow(["*"], on_message, page.actor)
    await refresh()
    ui.timer(1.0, flush)
