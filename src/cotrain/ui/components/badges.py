"""Status badges and small stat tiles."""

from __future__ import annotations

from nicegui import ui

from cotrain.ui.i18n import t
from cotrain.ui.theme import STATUS_COLORS


def status_label(status: str) -> str:
    return t(f"status.{status}") if status in STATUS_COLORS else status


def status_badge(status: str) -> ui.badge:
    badge = ui.badge(status_label(status), color=STATUS_COLORS.get(status, "grey-6"))
    badge.classes("px-2 py-1 text-[12px] font-medium").props('rounded data-testid="status-badge"')
    return badge


def set_status(badge: ui.badge, status: str) -> None:
    badge.set_text(status_label(status))
    badge.props(f"color={STATUS_COLORS.get(status, 'grey-6')}")


def stat_tile(label: str, value: str, icon: str | None = None, testid: str | None = None) -> ui.label:
    """A tile with a big number; returns the value label so callers can update it."""
    with ui.card().classes("ct-card flex-1 min-w-[150px] px-5 py-4 gap-1").props("flat"):
        with ui.row().classes("items-center gap-2 no-wrap"):
            if icon:
                ui.icon(icon, size="18px").classes("text-primary")
            ui.label(label).classes("ct-stat-label")
        value_label = ui.label(value).classes("ct-stat-value")
        if testid:
            value_label.props(f'data-testid="{testid}"')
    return value_label


def copyable(text: str, testid: str | None = None, wrap: bool = False) -> None:
    """A code block with a copy button (one line, or wrapped for long commands)."""
    with ui.row().classes("w-full items-center no-wrap gap-2"):
        code = ui.label(text).classes("ct-code flex-1 py-2 min-w-0")
        if wrap:
            code.style("white-space: pre-wrap; word-break: break-all")
        if testid:
            code.props(f'data-testid="{testid}"')
        ui.button(icon="content_copy", on_click=lambda: _copy(text)).props(
            f'flat round dense aria-label="{t("common.copy")}"').tooltip(t("common.copy"))


def _copy(text: str) -> None:
    ui.clipboard.write(text)
    ui.notify(t("common.copied"), type="positive", position="bottom")
