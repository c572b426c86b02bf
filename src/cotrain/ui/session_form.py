"""The New-session form's logic, apart from its widgets: the request body from field values,
validation with the server's own schema and config generator, and the model estimate."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cotrain.config import CotrainConfig, config_to_toml
from cotrain.config.memory import process_memory_bytes
from cotrain.config.presets import get_preset
from cotrain.server.config_generator import SessionConfigError, build_config
from cotrain.server.schemas import SessionCreate

FieldKey = tuple[str, ...]  # ("name",) or ("trainingConfig", "batchSize")

PREVIEW_ID = "preview"


@dataclass
class Checked:
    """The outcome of checking the form: a valid body and config, or errors per field."""

    body: SessionCreate | None = None
    config: CotrainConfig | None = None
    errors: dict[FieldKey, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.errors and not self.general


def build_body(values: dict[FieldKey, Any]) -> dict[str, Any]:
    """Nest the non-empty field values into the camelCase request body."""
    body: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer() and key[-1] not in ("learningRate",):
            value = int(value)
        node = body
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    return body


def check(values: dict[FieldKey, Any], known: set[FieldKey]) -> Checked:
    """Validate like `POST /api/v1/sessions` does: the request schema, then the config."""
    raw = build_body(values)
    try:
        body = SessionCreate.model_validate(raw)
    except ValidationError as exc:
        out = Checked()
        for error in exc.errors():
            _place(out, tuple(str(p) for p in error["loc"]), error["msg"], known)
        return out
    try:
        config = build_config(PREVIEW_ID, body)
    except SessionConfigError as exc:
        out = Checked(body=body)
        for problem in exc.errors:
            _place(out, tuple(str(p) for p in problem["loc"] if p != "body"), problem["msg"], known)
        return out
    return Checked(body=body, config=config)


RESEND = re.compile(r"\s*Change [\w.]+ and send the request again\.$")


def _place(out: Checked, loc: FieldKey, message: str, known: set[FieldKey]) -> None:
    message = RESEND.sub("", message)  # the field is right there: no need to say which to change
    if loc in known:
        out.errors.setdefault(loc, message)
    else:
        out.general.append(f"{'.'.join(loc)}: {message}" if loc else message)


def preview_toml(config: CotrainConfig) -> str:
    text = config_to_toml(config)
    return re.sub(rf'^id = "{PREVIEW_ID}"\n', "", text, flags=re.MULTILINE)


@dataclass
class Estimate:
    parameters: int
    memory_bytes: int
    processes: int


def estimate(config: CotrainConfig) -> Estimate | None:
    """The form's estimate; the memory figure is the one the server checks against its workers."""
    try:
        preset = get_preset(config.model.type, config.model.size)
    except KeyError:
        return None
    memory = process_memory_bytes(config)
    assert memory is not None  # a known preset
    return Estimate(preset.num_parameters(config.data.vocab_size), memory, config.distributed.world_size)
