"""New session: the original design's fields plus the advanced ones, validated as you type with
the server's own messages, with a model estimate and the generated TOML."""

from __future__ import annotations

from typing import Any, TypeVar

from nicegui import ui

from cotrain.config.presets import MODEL_FAMILIES, sizes_of
from cotrain.server.config_generator import SessionConfigError
from cotrain.server.errors import ServiceError
from cotrain.server.schemas import DistributedConfigIn
from cotrain.ui import audit_data, session_form
from cotrain.ui import format as fmt
from cotrain.ui.blocking import run_blocking
from cotrain.ui.context import platform
from cotrain.ui.i18n import t
from cotrain.ui.layout import frame, page_title, sign_in_dialog
from cotrain.ui.session_form import FieldKey

Field = ui.input | ui.number | ui.select
AnyField = TypeVar("AnyField", ui.input, ui.number, ui.select)


def _card(title: str, icon: str) -> ui.column:
    with ui.card().classes("ct-card w-full p-5 gap-4").props("flat"):
        with ui.row().classes("items-center gap-2"):
            ui.icon(icon, size="20px").classes("text-primary")
            ui.label(title).classes("ct-section-title")
        column = ui.column().classes("w-full gap-3")
    return column


def _show_error(element: Field, message: str | None) -> None:
    if element.error != message:
        element.error = message  # NiceGUI's own error slot of the field


@ui.page("/sessions/new")
async def new_session_page() -> None:
    page = await frame("sessions")
    fields: dict[FieldKey, Field] = {}

    def add(key: FieldKey, element: AnyField, testid: str) -> AnyField:
        element.props(f'outlined dense data-testid="{testid}"').classes("flex-1 min-w-[160px]")
        element.without_auto_validation()  # the messages come from the server's validation, below
        fields[key] = element
        return element

    hint = t("new.server_default")
    with page.body:
        page_title(t("new.title"), t("new.subtitle"))
        if page.actor is None:
            with ui.card().classes("ct-card w-full px-5 py-3").props("flat"):
                with ui.row().classes("w-full items-center justify-between"):
                    with ui.row().classes("items-center gap-2"):
                        ui.icon("lock", size="20px").classes("text-amber-8")
                        ui.label(t("auth.needed"))
                    ui.button(t("auth.sign_in"), icon="login", on_click=sign_in_dialog).props(
                        'unelevated no-caps data-testid="form-sign-in"'
                    )
        with ui.row().classes("w-full gap-5 items-start no-wrap"):
            with ui.column().classes("flex-1 gap-5 min-w-0"):
                with _card(t("new.basics"), "badge"):
                    add(("name",), ui.input(t("new.name"), value=_suggest_name()), "f-name").classes("w-full")
                    add(("description",), ui.textarea(t("new.description")).props("autogrow"), "f-description").classes(
                        "w-full"
                    )
                with _card(t("new.model"), "memory"), ui.row().classes("w-full gap-3"):
                    model_type = add(
                        ("modelConfig", "type"),
                        ui.select(list(MODEL_FAMILIES), value="llama2", label=t("new.model_type")),
                        "f-model-type",
                    )
                    model_size = add(
                        ("modelConfig", "size"),
                        ui.select(list(sizes_of("llama2")), value="debug", label=t("new.model_size")),
                        "f-model-size",
                    )
                    add(
                        ("modelConfig", "precision"),
                        ui.select(["fp32", "bf16", "fp16"], value="fp32", label=t("new.precision")),
                        "f-precision",
                    )
                with _card(t("new.training"), "tune"):
                    with ui.row().classes("w-full gap-3"):
                        add(
                            ("trainingConfig", "batchSize"),
                            ui.number(t("new.batch_size"), value=32, step=1),
                            "f-batch-size",
                        )
                        add(
                            ("trainingConfig", "learningRate"),
                            ui.number(t("new.learning_rate"), value=3e-4, step=1e-4, format="%.2e"),
                            "f-learning-rate",
                        )
                        add(
                            ("trainingConfig", "optimizer"),
                            ui.select(["adamw", "adam", "sgd"], value="adamw", label=t("new.optimizer")),
                            "f-optimizer",
                        )
                    with ui.row().classes("w-full gap-3"):
                        add(("trainingConfig", "epochs"), ui.number(t("new.epochs"), value=1, step=1), "f-epochs")
                        add(
                            ("trainingConfig", "maxSteps"),
                            ui.number(t("new.max_steps"), step=1).props(f'hint="{t("new.max_steps_hint")}"'),
                            "f-max-steps",
                        )
                        add(
                            ("trainingConfig", "warmupSteps"),
                            ui.number(t("new.warmup_steps"), step=1).props(f'placeholder="{hint}"'),
                            "f-warmup",
                        )
                with _card(t("new.distributed"), "lan"), ui.row().classes("w-full gap-3"):
                    add(("distributedConfig", "nodes"), ui.number(t("new.nodes"), value=1, step=1), "f-nodes")
                    add(
                        ("distributedConfig", "gpusPerNode"),
                        ui.number(t("new.gpus_per_node"), value=1, step=1),
                        "f-gpus",
                    )
                    strategy = add(
                        ("distributedConfig", "strategy"),
                        ui.select(
                            {"ddp": "DDP", "fsdp": "FSDP", "diloco": "DiLoCo"}, value="ddp", label=t("new.strategy")
                        ),
                        "f-strategy",
                    )
                    inner = add(
                        ("distributedConfig", "innerSteps"),
                        ui.number(t("new.inner_steps"), step=1).props(f'placeholder="{hint}"'),
                        "f-inner-steps",
                    )
                    inner.bind_visibility_from(strategy, "value", backward=lambda v: v == "diloco")
                    if "compression" in DistributedConfigIn.model_fields:  # once the server's schema takes it
                        compression = add(
                            ("distributedConfig", "compression"),
                            ui.select(["none", "fp16", "int8", "int4", "topk"], value=None, label=t("new.compression")),
                            "f-compression",
                        )
                        compression.bind_visibility_from(strategy, "value", backward=lambda v: v == "diloco")
                with (
                    ui.expansion(t("new.advanced"), icon="settings")
                    .classes("ct-card w-full")
                    .props('dense header-class="px-5 py-3 ct-section-title" data-testid="advanced"')
                ):
                    with ui.column().classes("w-full gap-3 px-5 pb-5"):
                        with ui.row().classes("w-full gap-3"):
                            add(
                                ("dataConfig", "dataset"), ui.input(t("new.dataset"), placeholder="stdlib"), "f-dataset"
                            )
                            add(
                                ("dataConfig", "seqLength"),
                                ui.number(t("new.seq_length"), step=1).props(f'placeholder="{hint}"'),
                                "f-seq-length",
                            )
                            add(
                                ("dataConfig", "maxBytes"),
                                ui.number(t("new.max_bytes"), step=1000).props(f'placeholder="{hint}"'),
                                "f-max-bytes",
                            )
                        with ui.row().classes("w-full gap-3"):
                            add(
                                ("dataConfig", "vocabSize"),
                                ui.number(t("new.vocab_size"), step=256).props(f'placeholder="{hint}"'),
                                "f-vocab-size",
                            )
                            add(
                                ("trainingConfig", "logInterval"),
                                ui.number(t("new.log_interval"), step=1).props(f'placeholder="{hint}"'),
                                "f-log-interval",
                            )
                            add(
                                ("trainingConfig", "evalInterval"),
                                ui.number(t("new.eval_interval"), step=1).props(f'placeholder="{hint}"'),
                                "f-eval-interval",
                            )
                            add(
                                ("checkpointConfig", "interval"),
                                ui.number(t("new.checkpoint_interval"), step=1).props(f'placeholder="{hint}"'),
                                "f-checkpoint-interval",
                            )
            with ui.column().classes("w-[380px] gap-5 shrink-0 sticky top-[72px]"):
                with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
                    with ui.row().classes("items-center gap-2"):
                        ui.icon("calculate", size="20px").classes("text-primary")
                        ui.label(t("new.estimate")).classes("ct-section-title")
                    with ui.row().classes("w-full justify-between gap-2 no-wrap"):
                        params = _metric(t("new.parameters"), "est-params")
                        memory = _metric(t("new.memory_per_gpu"), "est-memory")
                        processes = _metric(t("new.processes"), "est-processes")
                    ui.label(t("new.estimate_note")).classes("text-[12px] ct-muted")
                with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
                    with ui.row().classes("items-center gap-2"):
                        ui.icon("description", size="20px").classes("text-primary")
                        ui.label(t("new.preview")).classes("ct-section-title")
                    preview = (
                        ui.label("")
                        .classes("ct-code w-full max-h-[300px] text-[11.5px]")
                        .props('data-testid="toml-preview"')
                    )
                problems = ui.column().classes("w-full gap-1").props('data-testid="form-problems"')
                with ui.row().classes("w-full gap-2 no-wrap"):
                    create = (
                        ui.button(t("new.create"), icon="rocket_launch")
                        .props('unelevated no-caps data-testid="create"')
                        .classes("flex-1")
                    )
                    draft = ui.button(t("new.create_draft")).props('outline no-caps data-testid="create-draft"')
                if page.actor is None:
                    with ui.row().classes("w-full items-start gap-2 no-wrap -mt-2"):
                        ui.icon("lock", size="16px").classes("text-amber-8 mt-[2px]")
                        ui.link(t("auth.needed"), "#").classes("text-sm").on("click.prevent", sign_in_dialog)

    state: dict[str, Any] = {"checked": None}

    def values() -> dict[FieldKey, Any]:
        return {key: element.value for key, element in fields.items()}

    def validate() -> session_form.Checked:
        checked = session_form.check(values(), set(fields))
        state["checked"] = checked
        for key, element in fields.items():
            _show_error(element, checked.errors.get(key))
        problems.clear()
        with problems:
            for message in checked.general:
                ui.label(message).classes("text-negative text-sm")
        if checked.config is not None:
            preview.set_text(session_form.preview_toml(checked.config))
            est = session_form.estimate(checked.config)
            params.set_text(fmt.count(est.parameters) if est else "—")
            memory.set_text(fmt.size(est.memory_bytes) if est else "—")
            processes.set_text(str(est.processes) if est else "—")
        allowed = checked.ok and page.actor is not None
        create.set_enabled(allowed)
        draft.set_enabled(allowed)
        return checked

    def on_type_change() -> None:
        sizes = list(sizes_of(model_type.value))
        model_size.set_options(sizes, value=model_size.value if model_size.value in sizes else sizes[0])

    async def submit(auto_start: bool) -> None:
        checked = validate()
        if not checked.ok or checked.body is None:
            ui.notify(t("new.invalid"), type="warning")
            return
        body = checked.body.model_copy(update={"auto_start": auto_start})
        try:
            row = await run_blocking(
                audit_data.audited,
                page.actor,
                "session.create",
                "",
                audit_data.client_ip(),
                platform().sessions.create,
                body,
                page.actor,
            )  # issue 11: audit log
        except SessionConfigError as exc:
            problems.clear()
            with problems:
                for error in exc.errors:
                    ui.label(error["msg"]).classes("text-negative text-sm")
            return
        except ServiceError as exc:
            ui.notify(str(exc), type="negative", multi_line=True)
            return
        ui.notify(t("new.created", name=row.name), type="positive")
        ui.navigate.to(f"/sessions/{row.id}")

    model_type.on_value_change(on_type_change)
    for element in fields.values():
        element.on_value_change(validate)
    create.on_click(lambda: submit(True))
    draft.on_click(lambda: submit(False))
    validate()


def _metric(label: str, testid: str) -> ui.label:
    with ui.column().classes("gap-0"):
        ui.label(label).classes("ct-stat-label")
        value = ui.label("—").classes("text-lg font-semibold").props(f'data-testid="{testid}"')
    return value


def _suggest_name() -> str:
    import datetime

    return f"run-{datetime.datetime.now():%Y%m%d-%H%M}"
