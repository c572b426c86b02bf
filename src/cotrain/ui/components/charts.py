"""Line charts (ECharts) that take points as they arrive and redraw at most once per flush."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from cotrain.ui.i18n import t
from cotrain.ui.theme import SERIES

AXIS: dict[str, Any] = {"axisLabel": {"color": "#8a8f9c", "fontSize": 11},
                        "axisLine": {"lineStyle": {"color": "#8a8f9c55"}},
                        "splitLine": {"lineStyle": {"color": "#8a8f9c22"}}}


class LineChart:
    """One chart card: a title, a few named series of (x, y) points, an empty-state text."""

    def __init__(self, title: str, series: list[str], *, empty_text: str, testid: str, height: str = "220px",
                 x_name: str | None = None, y_format: str | None = None, colors: list[str] | None = None,
                 integer_y: bool = False):
        self.points: list[list[list[float]]] = [[] for _ in series]
        self.dirty = False
        colors = colors or SERIES
        x_name = x_name if x_name is not None else t("detail.chart.step")
        y_axis: dict[str, Any] = {"type": "value", "scale": True, **AXIS}
        if integer_y:  # counts (peers): whole numbers from zero
            y_axis.update({"scale": False, "min": 0, "minInterval": 1, ":max": "v => Math.max(2, v.max + 1)"})
        if y_format == "exp":
            y_axis["axisLabel"] = {**AXIS["axisLabel"], ":formatter": "v => v.toExponential(1)"}
        options: dict[str, Any] = {
            "animation": False,
            "grid": {"left": 8, "right": 16, "top": 28 if len(series) > 1 else 12, "bottom": 22,
                     "containLabel": True},
            "tooltip": {"trigger": "axis", "confine": True},
            "legend": {"show": len(series) > 1, "top": 0, "right": 8, "textStyle": {"color": "#8a8f9c"},
                       "itemHeight": 8},
            "xAxis": {"type": "value", "name": x_name, "nameLocation": "middle", "nameGap": 24, "scale": True,
                      "minInterval": 1, "nameTextStyle": {"color": "#8a8f9c", "fontSize": 11}, **AXIS},
            "yAxis": y_axis,
            "title": {"show": True, "text": empty_text, "left": "center", "top": "middle",
                      "textStyle": {"color": "#8a8f9c", "fontSize": 13, "fontWeight": "normal"}},
            "series": [
                {"name": name, "type": "line", "showSymbol": False, "smooth": False, "data": [],
                 "lineStyle": {"width": 2}, "color": colors[i % len(colors)], "connectNulls": True}
                for i, name in enumerate(series)
            ],
        }
        with ui.card().classes("ct-card w-full p-4 gap-2").props("flat"):
            ui.label(title).classes("ct-section-title")
            self.chart = ui.echart(options).classes("w-full").style(f"height: {height}").props(
                f'data-testid="{testid}"')
        self.chart.props('data-points="0"')

    def set_empty_text(self, text: str) -> None:
        if self.chart.options["title"]["text"] != text:
            self.chart.options["title"]["text"] = text
            self.dirty = True

    def set(self, index: int, points: list[list[float]]) -> None:
        self.points[index] = [p for p in points if p[1] is not None]
        self.dirty = True

    def add(self, index: int, x: float | None, y: float | None) -> None:
        if x is None or y is None:
            return
        series = self.points[index]
        if series and x <= series[-1][0]:
            if x == series[-1][0]:
                series[-1] = [x, y]
                self.dirty = True
            return  # replayed or older than what is shown
        series.append([x, y])
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        options = self.chart.options
        for series, points in zip(options["series"], self.points, strict=True):
            series["data"] = points
        total = sum(len(p) for p in self.points)
        options["title"]["show"] = total == 0
        self.chart.props(f'data-points="{total}"')
        self.chart.update()


# ---- issue 19: charts of the Machines and DiLoCo rounds sections ----------------------------------
# y-axis and tooltip formatters (JavaScript): bytes, bytes per second, percent
_BYTES_JS = ("v => { if (v == null) return '—'; const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0; "
             "let x = Math.abs(v); while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; } "
             "return (i ? x.toFixed(1) : x.toFixed(0)) + ' ' + u[i]SUFFIX; }")
FORMATTERS = {
    "bytes": _BYTES_JS.replace("SUFFIX", ""),
    "rate": _BYTES_JS.replace("SUFFIX", " + '/s'"),
    "percent": "v => v == null ? '—' : Math.round(v) + '%'",
    "seconds": "v => v == null ? '—' : (Math.round(v * 10) / 10) + ' s'",
}


def _card_chart(title: str, options: dict[str, Any], testid: str, height: str, subtitle: str = "") -> ui.echart:
    with ui.card().classes("ct-card w-full p-4 gap-2").props("flat"):
        ui.label(title).classes("ct-section-title")
        if subtitle:
            ui.label(subtitle).classes("text-[12px] ct-muted -mt-1")
        chart = ui.echart(options).classes("w-full").style(f"height: {height}").props(f'data-testid="{testid}"')
    chart.props('data-points="0"')
    return chart


class TimeChart:
    """Named series over wall-clock time whose set grows as nodes appear (one line per node, or per
    node and direction); `replace` takes the whole picture, redrawn at most once per flush."""

    def __init__(self, title: str, *, empty_text: str, testid: str, kind: str, height: str = "200px",
                 subtitle: str = "", paired: bool = False):
        self.data: dict[str, list[list[float]]] = {}
        self.dirty = False
        # the series come in twos per node, named "<node> <direction>" (in / out, read / write): one
        # colour and one legend entry per node, the second direction dashed
        self.paired = paired
        self.kind = kind
        formatter = FORMATTERS[kind]
        y_axis: dict[str, Any] = {"type": "value", "min": 0, **AXIS,
                                  "axisLabel": {**AXIS["axisLabel"], ":formatter": formatter}}
        if kind == "percent":
            y_axis["max"] = 100
        options: dict[str, Any] = {
            "animation": False,
            "grid": {"left": 8, "right": 16, "top": 30, "bottom": 8, "containLabel": True},
            "tooltip": {"trigger": "axis", "confine": True, ":valueFormatter": formatter},
            "legend": {"show": True, "type": "scroll", "top": 0, "left": 0, "textStyle": {"color": "#8a8f9c"},
                       "itemHeight": 8},
            "xAxis": {"type": "time", **AXIS, "axisLabel": {**AXIS["axisLabel"], "hideOverlap": True}},
            "yAxis": y_axis,
            "title": {"show": True, "text": empty_text, "left": "center", "top": "middle",
                      "textStyle": {"color": "#8a8f9c", "fontSize": 13, "fontWeight": "normal"}},
            "series": [],
        }
        self.chart = _card_chart(title, options, testid, height, subtitle)

    def set_empty_text(self, text: str) -> None:
        if self.chart.options["title"]["text"] != text:
            self.chart.options["title"]["text"] = text
            self.dirty = True

    def replace(self, data: dict[str, list[list[float]]]) -> None:
        if data != self.data:
            self.data = {name: [list(p) for p in points] for name, points in data.items()}
            self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        options = self.chart.options
        series, directions = [], []
        for i, (name, points) in enumerate(self.data.items()):
            node, direction = name.rsplit(" ", 1) if self.paired and " " in name else (name, "")
            directions.append(direction)
            color = SERIES[(i // 2 if self.paired else i) % len(SERIES)]
            dashed = self.paired and i % 2 == 1
            series.append({"name": node, "type": "line", "showSymbol": False, "data": points, "color": color,
                           "lineStyle": {"width": 2, "type": "dashed" if dashed else "solid"}})
        options["series"] = series
        if self.paired:  # the tooltip names the direction the shared legend entry leaves out
            options["tooltip"][":formatter"] = (
                f"ps => {{ const d = {json.dumps(directions)}; const f = {FORMATTERS[self.kind]};"
                " return ps[0].axisValueLabel + ps.map(p => '<br>' + p.marker + p.seriesName + ' ' +"
                " d[p.seriesIndex] + ': <b>' + f(p.value[1]) + '</b>').join(''); }")
        total = sum(len(p) for p in self.data.values())
        options["title"]["show"] = total == 0
        self.chart.props(f'data-points="{total}" data-series="{len(self.data)}"')
        self.chart.update()


class StackedBars:
    """Bars per category (a DiLoCo round), stacked from named parts (training, averaging, waiting)."""

    def __init__(self, title: str, parts: list[tuple[str, str]], *, empty_text: str, testid: str,
                 x_name: str, kind: str = "seconds", height: str = "240px", subtitle: str = ""):
        self.parts = parts  # (key, label)
        self.data: dict[str, Any] = {"rounds": [], **{key: [] for key, _ in parts}}
        self.dirty = False
        formatter = FORMATTERS[kind]
        colors = ["#6366f1", "#f59e0b", "#ef4444", "#10b981"]
        options: dict[str, Any] = {
            "animation": False,
            "grid": {"left": 8, "right": 16, "top": 30, "bottom": 22, "containLabel": True},
            "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}, "confine": True,
                        ":valueFormatter": formatter},
            "legend": {"show": True, "top": 0, "right": 8, "textStyle": {"color": "#8a8f9c"}, "itemHeight": 8},
            "xAxis": {"type": "category", "data": [], "name": x_name, "nameLocation": "middle", "nameGap": 24,
                      "nameTextStyle": {"color": "#8a8f9c", "fontSize": 11}, **AXIS},
            "yAxis": {"type": "value", "min": 0, **AXIS, "axisLabel": {**AXIS["axisLabel"], ":formatter": formatter}},
            "title": {"show": True, "text": empty_text, "left": "center", "top": "middle",
                      "textStyle": {"color": "#8a8f9c", "fontSize": 13, "fontWeight": "normal"}},
            "series": [
                {"name": label, "type": "bar", "stack": "round", "data": [], "color": colors[i % len(colors)],
                 "barMaxWidth": 36, "emphasis": {"focus": "series"}}
                for i, (_key, label) in enumerate(parts)
            ],
        }
        self.chart = _card_chart(title, options, testid, height, subtitle)

    def set_empty_text(self, text: str) -> None:
        if self.chart.options["title"]["text"] != text:
            self.chart.options["title"]["text"] = text
            self.dirty = True

    def replace(self, data: dict[str, Any]) -> None:
        if data != self.data:
            self.data = data
            self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        options = self.chart.options
        options["xAxis"]["data"] = list(self.data["rounds"])
        for series, (key, _label) in zip(options["series"], self.parts, strict=True):
            series["data"] = list(self.data.get(key, []))
        count = len(self.data["rounds"])
        options["title"]["show"] = count == 0
        self.chart.props(f'data-points="{count}"')
        self.chart.update()
