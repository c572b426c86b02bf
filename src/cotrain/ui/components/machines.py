"""The session page's Machines section (one row per node or peer, charts over time) and DiLoCo
rounds section (the stacked breakdown per round, the slowest peer). They draw what
`machines_view.Machines` / `Rounds` hold; the page feeds those and calls `flush` once a second."""

from __future__ import annotations

import time
from typing import Any

from nicegui import ui

from cotrain.ui.components.charts import StackedBars, TimeChart
from cotrain.ui.i18n import t
from cotrain.ui.machines_view import Machines, Rounds

MACHINE_ROW = r"""
<q-tr :props="props" :class="props.row.stale ? 'ct-muted' : ''" :data-node="props.row.node">
  <q-td v-for="col in props.cols" :key="col.name" :props="props" :class="col.classes"
        :title="col.name.startsWith('gpu') ? props.row.gpu_detail : (col.name === 'node' ? props.row.node : null)">
    {{ col.value }}
  </q-td>
</q-tr>"""

ROUND_PEER_ROW = r"""
<q-tr :props="props" :data-peer="props.row.peer">
  <q-td v-for="col in props.cols" :key="col.name" :props="props" :class="col.classes"
        :title="col.name === 'peer_short' ? props.row.peer : null">
    {{ col.value }}<q-badge v-if="col.name === 'peer_short' && props.row.slowest" color="negative" outline
      class="q-ml-sm" label="SLOWEST" />
  </q-td>
</q-tr>"""

NUM = "tabular-nums whitespace-nowrap"


def _column(name: str, label: str, align: str = "right", classes: str = NUM) -> dict[str, Any]:
    return {"name": name, "label": label, "field": name, "align": align, "classes": classes,
            "headerClasses": "whitespace-nowrap"}


class MachinesSection:
    """A table of the nodes' latest samples and charts of RAM, network, disk (and GPU) per node."""

    def __init__(self, machines: Machines):
        self.machines = machines
        self.dirty = True
        self.rows: list[dict[str, Any]] = []
        with ui.card().classes("ct-card w-full p-5 gap-3").props('flat data-testid="machines-section"'):
            with ui.row().classes("w-full items-baseline justify-between"):
                ui.label(t("machines.title")).classes("ct-section-title")
                ui.label(t("machines.subtitle")).classes("text-[12px] ct-muted")
            columns = [
                _column("node_short", t("machines.col.node"), "left", "ct-mono whitespace-nowrap"),
                _column("gpu_util", t("machines.col.gpu_util")),
                _column("gpu_mem", t("machines.col.gpu_mem")),
                _column("cpu", t("machines.col.cpu")),
                _column("ram", t("machines.col.ram")),
                _column("net_in", t("machines.col.net_in")),
                _column("net_out", t("machines.col.net_out")),
                _column("disk_read", t("machines.col.disk_read")),
                _column("disk_write", t("machines.col.disk_write")),
                _column("tps", t("machines.col.tps")),
                _column("seen", t("machines.col.seen")),
            ]
            self.table = ui.table(columns=columns, rows=[], row_key="node")
            self.table.add_slot("body", MACHINE_ROW)
            self.table.props('flat dense hide-pagination :rows-per-page-options="[0]" data-testid="machines-table"')
            self.table.classes("w-full")
            self.empty = ui.label(t("machines.empty")).classes("text-sm ct-muted").props('data-testid="machines-empty"')
        with ui.grid(columns=3).classes("w-full gap-5"):
            waiting = t("machines.empty")
            self.ram_chart = TimeChart(t("machines.chart.ram"), empty_text=waiting, testid="machines-ram-chart",
                                       kind="bytes", subtitle=t("machines.chart.ram_hint"))
            self.net_chart = TimeChart(
                t("machines.chart.net"), empty_text=waiting, testid="machines-net-chart", kind="rate", paired=True,
                subtitle=t("machines.chart.lines", solid=t("machines.series.net_recv_bytes_per_s"),
                           dashed=t("machines.series.net_sent_bytes_per_s")))
            self.disk_chart = TimeChart(
                t("machines.chart.disk"), empty_text=waiting, testid="machines-disk-chart", kind="rate", paired=True,
                subtitle=t("machines.chart.lines", solid=t("machines.series.disk_read_bytes_per_s"),
                           dashed=t("machines.series.disk_write_bytes_per_s")))
        self.gpu_box = ui.column().classes("w-full")
        with self.gpu_box:
            self.gpu_chart = TimeChart(t("machines.chart.gpu"), empty_text=waiting, testid="machines-gpu-chart",
                                       kind="percent", height="180px", subtitle=t("machines.chart.gpu_hint"))
        self.charts = [self.ram_chart, self.net_chart, self.disk_chart, self.gpu_chart]

    def set_quiet(self, quiet: bool) -> None:
        """A finished or draft session waits for nothing: say there is nothing rather than 'waiting'."""
        text = t("machines.none") if quiet else t("machines.empty")
        self.empty.set_text(text)
        for chart in self.charts:
            chart.set_empty_text(text)
            chart.flush()

    def flush(self, now: float | None = None) -> None:
        """Ages move every second; rows and charts change only when a sample came in."""
        rows = self.machines.rows(now or time.time())
        if rows != self.rows:
            self.rows = rows
            self.table.rows = rows
            self.table.update()
            self.table.set_visibility(bool(rows))
            self.empty.set_visibility(not rows)
            self.table.props(f'data-rows="{len(rows)}"')
        if self.dirty:
            self.dirty = False
            self.ram_chart.replace(self.machines.chart("ram_used_bytes"))
            self.net_chart.replace(self.machines.chart("net_recv_bytes_per_s", "net_sent_bytes_per_s"))
            self.disk_chart.replace(self.machines.chart("disk_read_bytes_per_s", "disk_write_bytes_per_s"))
            self.gpu_chart.replace(self.machines.chart("gpu_util_percent"))
            self.gpu_box.set_visibility(self.machines.any_gpu())
        for chart in self.charts:
            chart.flush()


class RoundsSection:
    """DiLoCo: seconds per outer round spent training, averaging and waiting, stacked; the newest
    round's figures, its slowest peer, and each peer's time and traffic in it."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds
        self.dirty = True
        with ui.row().classes("w-full gap-5 no-wrap items-stretch").props('data-testid="rounds-section"'):
            with ui.column().classes("flex-1 min-w-0"):
                self.chart = StackedBars(
                    t("rounds.title"), [("train", t("rounds.train")), ("averaging", t("rounds.averaging")),
                                        ("wait", t("rounds.wait"))],
                    empty_text=t("rounds.empty"), testid="rounds-chart", x_name=t("rounds.axis"),
                    subtitle=t("rounds.subtitle"))
            with (ui.column().classes("flex-1 min-w-0"),
                  ui.card().classes("ct-card w-full h-full p-5 gap-3").props("flat")):
                with ui.row().classes("items-center gap-2 no-wrap"):
                    self.slowest_icon = ui.icon("hourglass_bottom", color="negative").classes("text-xl")
                    self.slowest = ui.label("").classes("text-sm font-semibold").props('data-testid="slowest-peer"')
                self.summary = ui.label(t("rounds.empty")).classes("text-[12.5px] ct-muted").props(
                    'data-testid="rounds-summary"')
                columns = [
                    _column("peer_short", t("rounds.col.peer"), "left", "ct-mono whitespace-nowrap"),
                    _column("train", t("rounds.col.train")),
                    _column("sent", t("rounds.col.sent")),
                    _column("received", t("rounds.col.received")),
                ]
                self.peers = ui.table(columns=columns, rows=[], row_key="peer")
                self.peers.add_slot("body", ROUND_PEER_ROW.replace("SLOWEST", t("rounds.slowest_badge")))
                self.peers.props('flat dense hide-pagination :rows-per-page-options="[0]" '
                                 'data-testid="round-peers-table"').classes("w-full")

    def set_quiet(self, quiet: bool) -> None:
        self.chart.set_empty_text(t("rounds.none") if quiet else t("rounds.empty"))
        if not self.rounds.by_round:
            self.summary.set_text(t("rounds.none") if quiet else t("rounds.empty"))
        self.chart.flush()

    def flush(self) -> None:
        if self.dirty:
            self.dirty = False
            self.chart.replace(self.rounds.bars())
            has = bool(self.rounds.by_round)
            if has:
                self.summary.set_text(self.rounds.summary())
            self.slowest.set_text(self.rounds.slowest_text())
            self.slowest_icon.set_visibility(has)
            self.slowest.set_visibility(has)
            rows = self.rounds.peer_rows()
            self.peers.rows = rows
            self.peers.update()
            self.peers.set_visibility(bool(rows))
        self.chart.flush()
