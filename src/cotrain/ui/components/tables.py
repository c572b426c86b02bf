"""Tables in the page's language (Quasar's own labels are English otherwise)."""

from __future__ import annotations

import json

from nicegui import ui

from cotrain.ui.i18n import t


def localized(table: ui.table) -> ui.table:
    page_range = json.dumps(t("table.range"))
    selected = json.dumps(t("table.selected"))
    table._props["rows-per-page-label"] = t("table.rows_per_page")
    table._props[":pagination-label"] = (
        f"(start, end, total) => {page_range}.replace('{{start}}', start).replace('{{end}}', end)"
        ".replace('{total}', total)"
    )
    table._props[":selected-rows-label"] = f"n => {selected}.replace('{{n}}', n)"
    table.update()
    return table
