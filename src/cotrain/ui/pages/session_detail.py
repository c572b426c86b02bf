"""Session detail: live progress and ETA, charts, peers, checkpoints, log tail and actions."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from nicegui import ui

from cotrain.server.chain_bridge import owner_wallet
from cotrain.server.errors import NotFound, ServiceError
from cotrain.server.join_command import join_command
from cotrain.server.message_data import (
    CheckpointData,
    ErrorData,
    EvalData,
    PeerData,
    ProgressData,
    StatusData,
    parse_message,
)
from cotrain.ui import audit_data, live, model_data, session_view
from cotrain.ui import format as fmt
from cotrain.ui.blocking import run_blocking
from cotrain.ui.components.badges import copyable, set_status, status_badge
from cotrain.ui.components.charts import LineChart
from cotrain.ui.components.machines import MachinesSection, RoundsSection
from cotrain.ui.context import platform
from cotrain.ui.i18n import t
from cotrain.ui.layout import empty_state, frame, sign_in_dialog
from cotrain.ui.machines_view import Machines, Rounds
from cotrain.ui.theme import STATUS_COLORS

FINAL = ("completed", "failed", "cancelled")
PEER_ROW = r"""
<q-tr :props="props" :class="props.row.left ? 'ct-muted' : ''">
  <q-td v-for="col in props.cols" :key="col.name" :props="props" :class="col.classes"
        :title="col.name === 'peer_id' ? props.row.peer_id : null">
    {{ col.value }}<q-badge v-if="col.name === 'peer_id' && props.row.left" outline color="grey" class="q-ml-sm"
      label="LEFT" />
  </q-td>
</q-tr>"""
ACTIONS = {  # action -> states it applies to (as the session service allows)
    "start": ("draft", "completed"),  # failed or cancelled ones: retry (a fresh retry budget)
    "cancel": ("draft", "queued", "starting", "running"),
    "retry": ("failed", "cancelled"),
}


@ui.page("/sessions/{session_id}")
async def session_detail_page(session_id: str, request: Request) -> None:
    page = await frame("sessions")
    relay = live.Relay()  # holds messages until the page is built
    live.follow([session_id], relay, page.actor)
    try:
        view = await run_blocking(session_view.load, session_id, page.actor)
    except NotFound:
        with page.body:
            empty_state("search_off", t("detail.not_found", id=session_id), "")
            ui.button(t("detail.back"), icon="arrow_back", on_click=lambda: ui.navigate.to("/")).props("flat no-caps")
        return
    Detail(page, view, str(request.base_url)).build(relay)


class Detail:
    def __init__(self, page: Any, view: session_view.SessionView, base_url: str):
        self.page, self.view, self.row, self.base_url = page, view, view.row, base_url
        self.reload_wanted = False
        self.samples: list[tuple[int, float]] = [
            (int(p["step"]), float(p["time"])) for p in view.history if p.get("loss") is not None and p.get("time")
        ]
        self.machines, self.rounds = Machines(), Rounds()  # issue 19: per-node metrics, DiLoCo rounds
        self.machines.add_many(view.nodes)
        self.rounds.add_many(view.rounds)
        self.rounds_section: RoundsSection | None = None

    # ---- building ------------------------------------------------------------------------------
    def build(self, relay: live.Relay) -> None:
        row = self.row
        with self.page.body:
            ui.button(t("detail.back"), icon="arrow_back", on_click=lambda: ui.navigate.to("/")).props(
                "flat dense no-caps"
            ).classes("-mb-3 -ml-2")
            with ui.row().classes("w-full items-start justify-between no-wrap"):
                with ui.column().classes("gap-1 min-w-0"):
                    with ui.row().classes("items-center gap-3 no-wrap"):
                        ui.label(row.name).classes("text-2xl font-semibold tracking-tight truncate").props(
                            'data-testid="session-name"')
                        self.badge = status_badge(row.status)
                    meta = (f"{row.id} · {row.model_type} {row.model_size} · {row.strategy.upper()} · "
                            f"{fmt.clock(row.created_at)}")
                    ui.label(meta).classes("ct-mono text-[12px] ct-muted")
                    if row.description:
                        ui.label(row.description).classes("text-sm ct-muted")
                self._actions()
            self._progress_card()
            self.error_box = ui.column().classes("w-full")
            self._show_error(self.view.error)
            self._charts()
            if row.strategy == "diloco":  # why a DiLoCo run is slow first, then each machine
                self.rounds_section = RoundsSection(self.rounds)
            self.machines_section = MachinesSection(self.machines)
            with ui.row().classes("w-full gap-5 no-wrap items-stretch"):
                with ui.column().classes("flex-1 min-w-0"):
                    self._peers_card()
                with ui.column().classes("flex-1 min-w-0"):
                    self._checkpoints_card()
            self._logs_card()
            self._config_card()
        self._apply_status(row.status)
        self.machines_section.flush()  # the stored history, before the first live message
        if self.rounds_section is not None:
            self.rounds_section.flush()
        relay.connect(self.on_message)
        ui.timer(1.0, self.flush)
        ui.timer(3.0, self.refresh_logs)

    def _actions(self) -> None:
        with ui.row().classes("gap-2 no-wrap shrink-0"):
            self.buttons = {
                "start": ui.button(t("detail.start"), icon="play_arrow", on_click=lambda: self.act("start")).props(
                    'unelevated no-caps data-testid="action-start"'),
                "cancel": ui.button(t("detail.cancel"), icon="stop", on_click=lambda: self.act("cancel")).props(
                    'outline no-caps color=negative data-testid="action-cancel"'),
                "retry": ui.button(t("detail.retry"), icon="replay", on_click=lambda: self.act("retry")).props(
                    'unelevated no-caps data-testid="action-retry"'),
            }
            ui.button(t("detail.download_config"), icon="download", on_click=self.download_config).props(
                'outline no-caps data-testid="download-config"')
            self.model_button = ui.button(t("detail.download_model"), icon="download",
                                          on_click=self.download_model).props(
                'outline no-caps data-testid="download-model"')

    def _progress_card(self) -> None:
        row = self.row
        with ui.card().classes("ct-card w-full p-5 gap-4").props("flat"):
            with ui.row().classes("w-full items-end justify-between"):
                with ui.column().classes("gap-0"):
                    ui.label(t("detail.progress")).classes("ct-stat-label")
                    self.percent = ui.label(f"{row.progress:.0f}%").classes("text-3xl font-semibold").props(
                        'data-testid="progress-percent"')
                step_text = self._step_text(row.step, row.total_steps, self.view.queue_position)
                self.step_label = ui.label(step_text).classes("text-sm ct-muted").props('data-testid="progress-step"')
            self.bar = ui.linear_progress(value=(row.progress or 0) / 100, show_value=False, size="12px").props(
                f'rounded animation-speed=300 color={STATUS_COLORS.get(row.status, "primary")} '
                'data-testid="progress-bar"')
            with ui.row().classes("w-full gap-8"):
                self.eta = _inline_stat(t("detail.eta"), self._eta_text(), "eta")
                self.loss = _inline_stat(t("detail.loss"), fmt.metric(row.loss), "loss")
                self.peers_count = _inline_stat(t("detail.participants"), str(row.participants), "participants")
                tps = (row.latest_metrics or {}).get("tokens_per_second")
                self.tps = _inline_stat(t("detail.throughput"), fmt.count(tps), "tps")

    def _charts(self) -> None:
        waiting = t("detail.chart.empty")
        with ui.grid(columns=3).classes("w-full gap-5"):
            with ui.column().classes("col-span-2"):
                self.loss_chart = LineChart(t("detail.chart.loss"), [t("detail.chart.train"), t("detail.chart.val")],
                                            empty_text=waiting, testid="loss-chart", height="260px")
            self.acc_chart = LineChart(t("detail.chart.accuracy"), [t("detail.chart.train"), t("detail.chart.val")],
                                       empty_text=waiting, testid="accuracy-chart", height="260px")
            self.lr_chart = LineChart(t("detail.chart.lr"), ["lr"], empty_text=waiting, testid="lr-chart",
                                      y_format="exp",
                                      colors=["#10b981"])
            self.tps_chart = LineChart(t("detail.chart.throughput"), ["tokens/s"], empty_text=waiting,
                                       testid="tps-chart",
                                       colors=["#06b6d4"])
            self.part_chart = LineChart(t("detail.chart.participants"), ["peers"], empty_text=waiting,
                                        testid="participants-chart", colors=["#a855f7"], integer_y=True)
        history = self.view.history

        def series(key: str) -> list[list[float]]:
            return [[p["step"], p[key]] for p in history if p.get(key) is not None]

        self.loss_chart.set(0, series("loss"))
        self.loss_chart.set(1, series("val_loss"))
        self.acc_chart.set(0, series("accuracy"))
        self.acc_chart.set(1, series("val_accuracy"))
        self.lr_chart.set(0, series("learning_rate"))
        self.tps_chart.set(0, series("tokens_per_second"))
        self.part_chart.set(0, series("participants"))
        self.charts = [self.loss_chart, self.acc_chart, self.lr_chart, self.tps_chart, self.part_chart]
        for chart in self.charts:
            chart.flush()

    def _peers_card(self) -> None:
        with ui.card().classes("ct-card w-full p-5 gap-3 h-full").props("flat"):
            ui.label(t("detail.peers")).classes("ct-section-title")
            columns = [
                {"name": "peer_id", "label": t("detail.peer_id"), "field": "peer_id", "align": "left",
                 "classes": "ct-mono", ":format": "v => v.length > 16 ? v.slice(0, 8) + '…' + v.slice(-6) : v"},
                {"name": "tps", "label": t("detail.peer_tps"), "field": "tps", "align": "right",
                 ":format": "v => v == null ? '—' : Math.round(v).toLocaleString()"},
                {"name": "step", "label": t("detail.peer_step"), "field": "step", "align": "right"},
                {"name": "seen", "label": t("detail.peer_seen"), "field": "seen", "align": "right",
                 ":format": "v => v ? new Date(v * 1000).toLocaleTimeString() : '—'"},
                {"name": "share", "label": t("detail.peer_share"), "field": "share", "align": "right",
                 ":format": "v => v == null ? '—' : (v * 100).toFixed(1) + '%'"},
            ]
            if self.row.strategy == "diloco":  # the rounds its validator verified (chain/verdicts.py)
                columns.append({"name": "verified", "label": t("detail.peer_verified"), "field": "verified",
                                "align": "right", ":format": "v => v == null ? '—' : v"})
            self.peers_table = ui.table(columns=columns, rows=[], row_key="peer_id")
            self.peers_table.add_slot("body", PEER_ROW.replace("LEFT", t("detail.peer_left")))
            self.peers_table.props(
                'flat dense hide-pagination :rows-per-page-options="[0]" data-testid="peers-table"').classes("w-full")
            self.peers_empty = ui.label(t("detail.peers_empty")).classes("text-sm ct-muted")
        self._set_peers(self.view.peers)

    def _set_peers(self, peers: list[dict[str, Any]]) -> None:
        rows = session_view.peer_rows(peers, time.time(), self.view.verified_rounds)
        self.peers_table.rows = rows
        self.peers_table.update()
        self.peers_table.set_visibility(bool(rows))
        self.peers_empty.set_visibility(not rows)

    def _checkpoints_card(self) -> None:
        with ui.card().classes("ct-card w-full p-5 gap-3 h-full").props("flat"):
            ui.label(t("detail.checkpoints")).classes("ct-section-title")
            columns = [
                {"name": "step", "label": t("detail.ckpt_step"), "field": "step", "align": "left"},
                {"name": "size", "label": t("detail.ckpt_size"), "field": "size", "align": "right"},
                {"name": "time", "label": t("detail.ckpt_time"), "field": "time", "align": "right"},
            ]
            self.ckpt_table = ui.table(columns=columns, rows=[], row_key="step").props(
                'flat dense hide-pagination :rows-per-page-options="[0]" data-testid="checkpoints-table"'
            ).classes("w-full")
            self.ckpt_empty = ui.label(t("detail.checkpoints_empty")).classes("text-sm ct-muted")
        self._set_checkpoints(self.view.checkpoints)

    def _set_checkpoints(self, checkpoints: list[dict[str, Any]]) -> None:
        rows = [{"step": c["step"], "size": fmt.size(c["size_bytes"]), "time": fmt.clock(c["created_at"])}
                for c in sorted(checkpoints, key=lambda c: -c["step"])]
        self.ckpt_table.rows = rows
        self.ckpt_table.update()
        self.ckpt_table.set_visibility(bool(rows))
        self.ckpt_empty.set_visibility(not rows)

    def _logs_card(self) -> None:
        with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
            ui.label(t("detail.logs")).classes("ct-section-title")
            # column-reverse keeps the view scrolled to the newest line
            with ui.element("div").classes("ct-code w-full max-h-[260px] text-[11.5px]").style(
                    "display: flex; flex-direction: column-reverse"):
                self.log_view = ui.label("").props('data-testid="log-tail"')
        self._set_logs(self.view.logs)

    def _set_logs(self, lines: list[str]) -> None:
        text = "\n".join(lines).strip("\n")
        self.log_view.set_text(text or t("detail.logs_empty"))

    def _config_card(self) -> None:
        row = self.row
        with ui.expansion(t("detail.details"), icon="description").classes("ct-card w-full").props(
                'dense header-class="px-5 py-3 ct-section-title"'):
            ui.label(self.view.config_toml).classes("ct-code mx-5 mb-5").props('data-testid="session-config"')
        if row.strategy == "diloco":
            with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
                ui.label(t("detail.join")).classes("ct-section-title")
                wallet = owner_wallet(self.page.actor.name if self.page.actor else None)
                copyable(join_command(self.base_url, row.id, wallet),
                         testid="join-command", wrap=True)
                ui.label(t("network.wallet_hint")).classes("text-sm ct-muted")

    # ---- live updates ------------------------------------------------------------------------------
    def on_message(self, message: dict[str, Any]) -> None:
        if message.get("event") == live.GAP:
            self.reload_wanted = True
            return
        data = parse_message(message)
        if isinstance(data, ProgressData):
            self._on_progress(data)
        elif isinstance(data, EvalData):
            self.loss_chart.add(1, data.step, data.val_loss)
            self.acc_chart.add(1, data.step, data.val_accuracy)
        elif isinstance(data, StatusData):
            self._apply_status(data.status)
            if data.error:
                self._show_error(data.error)
            self.reload_wanted = True
        elif isinstance(data, CheckpointData | PeerData):
            self.reload_wanted = True
        elif isinstance(data, ErrorData) and data.error and not data.interrupted:
            self._show_error(data.error)

    def _on_progress(self, data: ProgressData) -> None:
        step, progress, metrics = data.step, data.progress, data.metrics
        self.percent.set_text(f"{progress:.0f}%")
        self.bar.set_value(progress / 100)
        self.step_label.set_text(self._step_text(step or 0, data.total_steps))
        self.loss.set_text(fmt.metric(data.loss))
        self.peers_count.set_text(str(data.participants or 0))
        self.tps.set_text(fmt.count(metrics.tokens_per_second))
        if step is not None and data.time:
            self.samples.append((step, data.time))
            self.row.total_steps = data.total_steps or self.row.total_steps
            self.eta.set_text(self._eta_text())
        self.loss_chart.add(0, step, data.loss)
        self.acc_chart.add(0, step, metrics.accuracy)
        self.lr_chart.add(0, step, metrics.learning_rate)
        self.tps_chart.add(0, step, metrics.tokens_per_second)
        self.part_chart.add(0, step, data.participants)
        if self.machines.add_progress(data):
            self.machines_section.dirty = True
        if self.rounds_section is not None and self.rounds.add_progress(data):
            self.rounds_section.dirty = True

    async def flush(self) -> None:
        """Redraw changed charts; reload what a status, checkpoint or peer message changed."""
        for chart in self.charts:
            chart.flush()
        self.machines_section.flush()
        if self.rounds_section is not None:
            self.rounds_section.flush()
        if self.reload_wanted:
            self.reload_wanted = False
            await self.reload()

    async def refresh_logs(self) -> None:
        if self.row.status in ("starting", "running", "cancelling"):
            self._set_logs(await run_blocking(session_view.logs, self.row.id, self.page.actor))

    async def reload(self) -> None:
        try:
            view = await run_blocking(session_view.load, self.row.id, self.page.actor)
        except NotFound:
            return
        self.view, self.row = view, view.row
        self._apply_status(view.row.status)
        # a queue position or a waiting reason (its Slurm job pending) may have come or gone with the status
        self.step_label.set_text(self._step_text(view.row.step, view.row.total_steps, view.queue_position))
        self._set_peers(view.peers)
        self._set_checkpoints(view.checkpoints)
        self._set_logs(view.logs)
        if self.machines.add_many(view.nodes):  # what a gap in the live messages left out
            self.machines_section.dirty = True
        if self.rounds_section is not None and self.rounds.add_many(view.rounds):
            self.rounds_section.dirty = True
        if view.row.status in FINAL:
            self.percent.set_text(f"{view.row.progress:.0f}%")
            self.bar.set_value((view.row.progress or 0) / 100)
            self.eta.set_text(t("common.none"))
            history = view.history
            self.loss_chart.set(1, [[p["step"], p["val_loss"]] for p in history if p.get("val_loss") is not None])
            self.acc_chart.set(1, [[p["step"], p["val_accuracy"]] for p in history
                                   if p.get("val_accuracy") is not None])

    def _apply_status(self, status: str) -> None:
        self.row.status = status
        set_status(self.badge, status)
        self.bar.props(f"color={STATUS_COLORS.get(status, 'primary')}")
        for action, button in self.buttons.items():
            button.set_visibility(status in ACTIONS[action])
        self.buttons["start"].set_text(t("detail.run_again") if status == "completed" else t("detail.start"))
        quiet = status in FINAL or status == "draft"
        for chart in getattr(self, "charts", []):
            chart.set_empty_text(t("detail.chart.none") if quiet else t("detail.chart.empty"))
            chart.flush()
        for section in (getattr(self, "machines_section", None), self.rounds_section):
            if section is not None:
                section.set_quiet(quiet)
        self.model_button.set_visibility(bool(self.view.versions))

    def _show_error(self, error: str | None) -> None:
        self.error_box.clear()
        if not error:
            return
        with self.error_box, ui.card().classes("ct-card w-full p-4 gap-1 bg-red-1 text-negative").props("flat"):
            with ui.row().classes("items-center gap-2"):
                ui.icon("error")
                ui.label(t("detail.error")).classes("font-semibold")
            ui.label(error).classes("ct-mono text-[12px] whitespace-pre-wrap")

    # ---- actions -------------------------------------------------------------------------------------
    async def act(self, action: str) -> None:
        if self.page.actor is None:
            sign_in_dialog()
            return
        method = getattr(platform().sessions, action)
        try:
            row = await run_blocking(audit_data.audited, self.page.actor, f"session.{action}", self.row.id,
                                     audit_data.client_ip(), method, self.row.id, self.page.actor)  # issue 11: audit
        except ServiceError as exc:
            ui.notify(str(exc), type="negative", multi_line=True)
            return
        self._apply_status(row.status)

    def download_config(self) -> None:
        ui.download.from_url(model_data.signed_link(f"/api/v1/sessions/{self.row.id}/config", self.page.actor))

    def download_model(self) -> None:
        if self.view.versions:
            latest = self.view.versions[-1]
            ui.download.from_url(model_data.download_url(latest["id"], self.page.actor))

    # ---- text ----------------------------------------------------------------------------------------
    def _step_text(self, step: int, total: int | None, queue_position: int | None = None) -> str:
        reason = self.view.waiting_reason
        if queue_position:
            return t("detail.queue_position", n=queue_position) + (f" · {reason}" if reason else "")
        if reason and self.row.status == "starting":  # claimed, but its Slurm job waits: Slurm's reason
            return reason
        return t("detail.step", step=step, total=total) if total else t("detail.step_unknown", step=step)

    def _eta_text(self) -> str:
        if self.row.status in FINAL:
            return t("common.none")
        return fmt.duration(session_view.eta_seconds(self.samples, self.row.total_steps))


def _inline_stat(label: str, value: str, testid: str) -> ui.label:
    with ui.column().classes("gap-0"):
        ui.label(label).classes("ct-stat-label")
        out = ui.label(value).classes("text-lg font-semibold").props(f'data-testid="stat-{testid}"')
    return out
