"""Line charts (ECharts) that take points as they arrive and redraw at most once per flush."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from cotrain.ui.i18n import t
from cotrain.ui.theme import SERIES

AXIS = {"axisLabel": {"color": "#8a8f9c", "fontSize": 11}, "axisLine": {"lineStyle": {"color": "#8a8f9c55"}},
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
            "grid": {"left": 8, "right": 16, "top": 28 if len(series) > 1 else 12, "bottom": 22, "containLabel": True},
            "tooltip": {"trigger": "axis", "confine": True},
            "legend": {"show": len(series) > 1, "top": 0, "right": 8, "textStyle": {"color": "#8a8f9c"}, "itemHeight": 8},
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
            self.chart = ui.echart(options).classes("w-full").style(f"height: {height}").props(f'data-testid="{testid}"')
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
