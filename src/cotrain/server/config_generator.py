"""Turns the UI's session parameters (camelCase JSON) into a validated CoTrain TOML.

The one mapping from request fields to config keys lives in `FIELD_MAP`, so a config error on
`train.batch_size` can be reported against the field the person typed, `trainingConfig.batchSize`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cotrain.config import ConfigError, CotrainConfig, config_to_toml, validate_config
from cotrain.config.schema import TrackingConfig
from cotrain.server.schemas import SessionCreate

# (request section, request field) -> config key path
FIELD_MAP: dict[tuple[str, str], str] = {
    ("modelConfig", "type"): "model.type",
    ("modelConfig", "size"): "model.size",
    ("modelConfig", "precision"): "model.precision",
    ("trainingConfig", "batchSize"): "train.batch_size",
    ("trainingConfig", "learningRate"): "train.learning_rate",
    ("trainingConfig", "epochs"): "train.epochs",
    ("trainingConfig", "optimizer"): "train.optimizer",
    ("trainingConfig", "maxSteps"): "train.max_steps",
    ("trainingConfig", "warmupSteps"): "train.warmup_steps",
    ("trainingConfig", "logInterval"): "train.log_interval",
    ("trainingConfig", "evalInterval"): "train.eval_interval",
    ("distributedConfig", "nodes"): "distributed.nodes",
    ("distributedConfig", "gpusPerNode"): "distributed.gpus_per_node",
    ("distributedConfig", "strategy"): "distributed.strategy",
    ("distributedConfig", "innerSteps"): "distributed.diloco.inner_steps",
    ("distributedConfig", "initialPeers"): "distributed.diloco.initial_peers",
    ("distributedConfig", "compression"): "distributed.diloco.compression",
    ("distributedConfig", "topkFraction"): "distributed.diloco.topk_fraction",
    ("dataConfig", "dataset"): "data.dataset",
    ("dataConfig", "dataPath"): "data.data_path",
    ("dataConfig", "split"): "data.split",
    ("dataConfig", "textColumn"): "data.text_column",
    ("dataConfig", "seqLength"): "data.seq_length",
    ("dataConfig", "maxBytes"): "data.max_bytes",
    ("dataConfig", "vocabSize"): "data.vocab_size",
    ("checkpointConfig", "interval"): "checkpoint.interval",
    ("checkpointConfig", "keep"): "checkpoint.keep",
}
CONFIG_TO_FIELD = {key: list(field) for field, key in FIELD_MAP.items()}


class SessionConfigError(Exception):
    """The parameters do not make a valid config. `errors` are FastAPI-style 422 items whose
    `loc` names the request field."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(e["msg"] for e in errors))


def request_to_raw(session_id: str, body: SessionCreate) -> dict[str, Any]:
    """The config dict (before validation) for a create request."""
    # only what the person set: unset fields take the config schema's defaults
    payload = body.model_dump(by_alias=True, exclude_none=True, exclude_unset=True)
    raw: dict[str, Any] = {"session": {"id": session_id, "name": body.name}}
    if body.description:
        raw["session"]["description"] = body.description
    for (section, field), key in FIELD_MAP.items():
        value = (payload.get(section) or {}).get(field)
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    data = raw.setdefault("data", {})
    if "dataset" not in data and "data_path" not in data:
        data["dataset"] = "stdlib"  # a corpus every install has, so a session runs without setup
    return raw


def build_config(session_id: str, body: SessionCreate) -> CotrainConfig:
    """Validate the parameters as a config; raise `SessionConfigError` naming request fields."""
    try:
        return validate_config(request_to_raw(session_id, body))
    except ConfigError as exc:
        raise SessionConfigError([_problem_to_error(p) for p in exc.problems]) from None


# ---- experiment trackers (issue 17) ----
def with_server_tracking(config: CotrainConfig, defaults: Mapping[str, Any]) -> CotrainConfig:
    """`config` with the server's tracking (settings.tracking, from COTRAIN_TRACKING_*) for every
    [tracking] key the session's own config does not set: the session's value wins, then the
    server's, then the schema's default (no trackers)."""
    unset = {key: value for key, value in defaults.items() if key not in config.tracking.model_fields_set}
    if not unset:
        return config
    merged = config.model_copy(deep=True)
    # validated on assignment, and marked set, so the generated TOML writes it
    merged.tracking = TrackingConfig.model_validate({**config.tracking.model_dump(exclude_unset=True), **unset})
    return merged


def _problem_to_error(problem: str) -> dict[str, Any]:
    key = problem.split(" ", 1)[0].rstrip(":")
    loc = CONFIG_TO_FIELD.get(key)
    if loc is None:
        # a key the request does not expose: name the section it belongs to
        section = key.split(".", 1)[0]
        loc = [next((s for (s, _), k in FIELD_MAP.items() if k.startswith(section + ".")), section)]
    return {"loc": ["body", *loc], "msg": _sentence(problem, loc), "type": "config_invalid"}


def _sentence(problem: str, loc: list[str]) -> str:
    _, _, rest = problem.partition(" = ")
    shown = ".".join(loc)
    return f"{shown} = {rest}. Change {shown} and send the request again." if rest else f"{shown}: {problem}"


def write_config(config: CotrainConfig, directory: Path) -> Path:
    """Write `<session>.toml` under configs/generated/ and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{config.session.id}.toml"
    header = f"Generated by the CoTrain server for session {config.session.id} ({config.session.name})."
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(config_to_toml(config, header=header))
    tmp.replace(path)
    return path
