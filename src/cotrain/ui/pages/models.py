"""Models: every final model version with its evaluation metrics; compare several side by side."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from cotrain.ui import format as fmt
from cotrain.ui import model_data
from cotrain.ui.blocking import run_blocking
from cotrain.ui.components.charts import LineChart
from cotrain.ui.components.tables import localized
from cotrain.ui.i18n import t
from cotrain.ui.layout import empty_state, frame, page_title

COMPARED = (  # metric key, label key, how to show it
    ("val_loss", "models.col.val_loss", fmt.metric),
    ("val_perplexity", "models.col.val_perplexity", fmt.metric),
    ("val_accuracy", "models.col.val_accuracy", fmt.metric),
    ("num_parameters", "models.col.params", fmt.count),
    ("tokens_seen", "models.col.tokens", fmt.count),
)
NUM = "v => v == null ? '—' : Number(v).toPrecision(4)"
BIG = "v => v == null ? '—' : Intl.NumberFormat('en', {notation: 'compact', maximumSignificantDigits: 3}).format(v)"


def _columns() -> list[dict[str, Any]]:
    return [
        {"name": "session", "label": t("models.col.session"), "field": "session", "align": "left", "sortable": True},
        {"name": "version", "label": t("models.col.version"), "field": "version", "align": "left"},
        *({"name": name, "label": t(f"models.col.{name}"), "field": name, "align": "right", "sortable": True,
           ":format": NUM} for name in ("val_loss", "val_perplexity", "val_accuracy")),
        {"name": "params", "label": t("models.col.params"), "field": "params", "align": "right", ":format": BIG},
        {"name": "tokens", "label": t("models.col.tokens"), "field": "tokens", "align": "right", ":format": BIG},
        {"name": "created", "label": t("models.col.created"), "field": "created", "align": "right"},
        {"name": "download", "label": "", "field": "id", "align": "right"},
    ]


SESSION_SLOT = r"""
<q-td :props="props">
  <a :href="'/sessions/' + props.row.session_id" class="text-primary no-underline font-medium"
     @click.stop>{{ props.value }}</a>
</q-td>"""
DOWNLOAD_SLOT = """
<q-td :props="props">
  <q-btn flat round dense size="sm" icon="download" :href="props.row.download_url"
         aria-label="DOWNLOAD" @click.stop><q-tooltip>DOWNLOAD</q-tooltip></q-btn>
</q-td>"""


@ui.page("/models")
async def models_page() -> None:
    page = await frame("models")
    rows = await run_blocking(model_data.versions, page.actor)
    for row in rows:
        row["created"] = fmt.age(row["created_at"])
    with page.body:
        header = page_title(t("models.title"), t("models.subtitle"))
        if not rows:
            with ui.card().classes("ct-card w-full").props("flat"):
                empty_state("model_training", t("models.empty"), t("models.empty_hint"))
            return
        with header:
            compare_button = ui.button(t("models.compare"), icon="compare_arrows").props(
                'unelevated no-caps data-testid="compare"')
        with ui.card().classes("ct-card w-full p-0").props("flat"):
            table = ui.table(columns=_columns(), rows=rows, row_key="id", selection="multiple",
                             pagination={"rowsPerPage": 15})
            localized(table).classes("ct-table w-full").props('flat data-testid="models-table"')
            table.add_slot("body-cell-session", SESSION_SLOT)
            table.add_slot("body-cell-download", DOWNLOAD_SLOT.replace("DOWNLOAD", t("models.download")))
        result = ui.column().classes("w-full gap-5").props('data-testid="comparison"')

    def sync_button() -> None:
        compare_button.set_enabled(len(table.selected) >= 2)

    async def show() -> None:
        ids = [r["id"] for r in table.selected]
        if len(ids) < 2:
            ui.notify(t("models.select_two"), type="warning")
            return
        data = await run_blocking(model_data.compare, ids, page.actor)
        names = {r["id"]: f"{r['session']} {r['version']}" for r in rows}
        result.clear()
        with result:
            _comparison_table(data, names)
            _curves(data, {r["session_id"]: r["session"] for r in rows})

    table.on_select(lambda _: sync_button())
    compare_button.on_click(show)
    sync_button()


def _comparison_table(data: dict[str, Any], names: dict[int, str]) -> None:
    versions = data["versions"]
    best = data["best"]
    with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
        ui.label(t("models.comparison")).classes("ct-section-title")
        with ui.grid(columns=len(versions) + 1).classes("w-full gap-0").props('data-testid="comparison-table"'):
            ui.label(t("models.metric")).classes("ct-stat-label py-2")
            for v in versions:
                ui.label(names.get(v["id"], v["version"])).classes("font-semibold py-2 text-right")
            for key, label, show in COMPARED:
                ui.label(t(label)).classes("py-2 border-t border-gray-500/20")
                for v in versions:
                    with ui.row().classes("py-2 border-t border-gray-500/20 justify-end items-center gap-2 no-wrap"):
                        if best.get(key) == v["id"] and len(versions) > 1:
                            ui.badge(t("models.best"), color="positive").props("rounded outline")
                        best_class = " text-positive" if best.get(key) == v["id"] else ""
                        ui.label(show(v.get(key))).classes("font-medium" + best_class)


def _curves(data: dict[str, Any], session_names: dict[str, str]) -> None:
    curves = data["curves"]
    ids = list(curves)
    chart = LineChart(t("models.curves"), [session_names.get(i, i) for i in ids], empty_text=t("common.none"),
                      testid="compare-chart", height="300px")
    for index, session_id in enumerate(ids):
        chart.set(index, curves[session_id])
    chart.flush()
