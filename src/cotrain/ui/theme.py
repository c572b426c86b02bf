"""Brand colours, status colours and the page-wide CSS."""

from __future__ import annotations

from nicegui import ui

PRIMARY = "#4f46e5"
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#4f46e5"/>'
    '<circle cx="11" cy="11" r="4" fill="#fff"/><circle cx="21" cy="21" r="4" fill="#fff"/>'
    '<circle cx="21" cy="11" r="2.5" fill="#c7d2fe"/><circle cx="11" cy="21" r="2.5" fill="#c7d2fe"/></svg>'
)

LOGO = (  # the favicon's mark, white on the header's colour
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32" width="26" height="26">'
    '<rect width="32" height="32" rx="7" fill="#fff"/>'
    '<circle cx="11" cy="11" r="4" fill="#4f46e5"/><circle cx="21" cy="21" r="4" fill="#4f46e5"/>'
    '<circle cx="21" cy="11" r="2.5" fill="#a5b4fc"/><circle cx="11" cy="21" r="2.5" fill="#a5b4fc"/></svg>'
)

# Quasar colour names for the session states
STATUS_COLORS: dict[str, str] = {
    "draft": "grey-6",
    "queued": "amber-8",
    "starting": "light-blue-7",
    "running": "indigo-6",
    "cancelling": "orange-8",
    "completed": "positive",
    "failed": "negative",
    "cancelled": "blue-grey-5",
}

# Series colours of the charts (readable on light and dark backgrounds)
SERIES = ["#6366f1", "#f59e0b", "#10b981", "#ef4444", "#06b6d4", "#a855f7", "#84cc16", "#ec4899"]

CSS = """
body { font-family: Inter, system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans SC", "PingFang SC", sans-serif; }
.ct-page { max-width: 1180px; margin: 0 auto; width: 100%; padding: 20px 24px 48px; }
.ct-card { border-radius: 12px; box-shadow: 0 1px 2px rgba(15, 23, 42, .06), 0 1px 8px rgba(15, 23, 42, .04); }
body.body--light { background: #f6f7fb; }
body.body--light .ct-card { border: 1px solid #e6e8f0; }
body.body--dark { background: #0f1117; }
body.body--dark .ct-card { background: #181b24; border: 1px solid #262a36; }
.ct-muted { opacity: .65; }
.ct-card .q-table__card, .ct-card .q-table__container { background: transparent; }
.ct-mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.ct-section-title { font-size: 15px; font-weight: 600; letter-spacing: .01em; }
.ct-stat-value { font-size: 24px; font-weight: 650; line-height: 1.2; }
.ct-stat-label { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; opacity: .6; }
.ct-code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; white-space: pre;
           overflow: auto; border-radius: 8px; padding: 12px 14px; }
body.body--light .ct-code { background: #f1f3f9; color: #1f2937; }
body.body--dark .ct-code { background: #11131a; color: #d1d5db; }
.ct-nav .q-btn { text-transform: none; font-weight: 500; }
.ct-nav .ct-active { background: rgba(255, 255, 255, .16); }
.ct-table .q-table__top, .ct-table thead tr th { font-weight: 600; }
.ct-table tbody tr { cursor: pointer; }
.q-field--error .q-field__bottom { white-space: normal; }
"""


def apply(dark: bool | None) -> None:
    """Colours, CSS and dark mode of the current page."""
    ui.colors(primary=PRIMARY, secondary="#0ea5e9", accent="#a855f7", positive="#16a34a", negative="#dc2626")
    ui.add_css(CSS)
    ui.dark_mode(dark)
