"""A session from a full engine config (issue 17): the TOML that `cotrain train` runs, submitted to
`POST /api/v1/sessions` as `{"engineConfig": "<TOML text>", ...}` (schemas.SessionFromConfig) or as
the body itself with `Content-Type: application/toml`.

The config is the engine's own (cotrain.config: every key), so it gets the rules a JSON create
gets from its request schema, plus rules for the keys that schema cannot express at all:

* The JSON schema's hard limits: every key the JSON create also has (config_generator.FIELD_MAP) is
  checked by `SessionCreate` itself, and that request (`equivalent_request`) is what the data roots,
  capacity, quota and priority checks of `SessionService` see, exactly as for a JSON create.
* The server's own keys: `session.id` becomes the new session's id (the config's own is replaced);
  `checkpoint.output_path` must be unset, for every role (checkpoints go where the server lists
  them and where the worker's engine may write: COTRAIN_HOME/models/checkpoints).
* Paths the run reads: `data.data_path` and an `hf:` folder in `data.dataset` go through the data
  roots check of every create (data_paths.py, approvals included); `model.path`, a `data.tokenizer`
  path and a `checkpoint.resume` folder must lie inside the data roots for members, or inside the data roots or
  COTRAIN_HOME/models (where the worker's engine allows them, core/path_guard.py) for maintainers and
  admins. A 422 names the key and the roots.
* Keys that act on the worker's machine (its listen addresses, the wallet credited with the server
  peer's work, tokenizer processes, tracker folders and URIs) and keys this module does not know yet
  (a section added to the engine later) need `Action.ENGINE_WORKER_KEYS`: a 403 for members.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cotrain.config import ConfigError, CotrainConfig, validate_config
from cotrain.data_roots import resolve, show_roots, within
from cotrain.server.config_generator import FIELD_MAP, SessionConfigError
from cotrain.server.data_paths import server_roots
from cotrain.server.permissions import Action, allowed, require, who_may
from cotrain.server.schemas import DataConfigIn, SessionCreate, SessionFromConfig

if TYPE_CHECKING:
    from cotrain.server.auth import Actor
    from cotrain.server.settings import Settings

FIELD = "engineConfig"
SECTIONS = frozenset({"session", "model", "train", "distributed", "distributed.diloco", "data", "checkpoint",
                      "tracking"})
# Keys a member may set (beyond them: ENGINE_WORKER_KEYS). Paths among them have their own rule below.
MEMBER_KEYS = frozenset({
    "session.id", "session.name", "session.description",
    "model.type", "model.size", "model.precision", "model.path", "model.dropout",
    *(f"train.{key}" for key in (
        "batch_size", "micro_batch_size", "learning_rate", "min_lr_ratio", "epochs", "max_steps", "optimizer",
        "schedule", "warmup_steps", "weight_decay", "betas", "momentum", "grad_clip", "seed", "deterministic",
        "device", "compile", "activation_checkpointing", "log_interval", "eval_interval", "eval_batches")),
    "distributed.nodes", "distributed.gpus_per_node", "distributed.strategy", "distributed.backend",
    *(f"distributed.diloco.{key}" for key in (
        "inner_steps", "outer_lr", "outer_momentum", "nesterov", "compression", "topk_fraction", "initial_peers",
        "min_peers", "matchmaking_time", "averaging_timeout", "progress_interval", "shard_samples", "commit_every",
        "receipt_quorum", "own_data_margin")),
    *(f"data.{key}" for key in (
        "seq_length", "data_path", "dataset", "split", "text_column", "max_bytes", "tokenizer", "vocab_size",
        "val_fraction", "mlm_probability")),
    "checkpoint.interval", "checkpoint.keep", "checkpoint.resume",
    "tracking.backends", "tracking.mlflow_experiment", "tracking.wandb_project",
})
WORKER_KEYS_WHY = {  # what the worker keys do, for the refusal
    "distributed.diloco.host_maddrs": "the addresses the worker listens on",
    "distributed.diloco.announce_maddrs": "the addresses the worker announces",
    "distributed.diloco.wallet": "the wallet credited with the server peer's work (the owner's own wallet is used)",
    "data.num_proc": "processes started on the worker",
    "tracking.tensorboard_dir": "a folder the worker writes to",
    "tracking.wandb_dir": "a folder the worker writes to",
    "tracking.mlflow_uri": "where the worker sends the run (a server, or a file it writes)",
    "tracking.wandb_mode": "whether the worker uploads with the operator's W&B key",
    "tracking.wandb_entity": "the W&B account the worker uploads to",
    "tracking.run_name": "the run the worker's trackers write to (another session's, if named so)",
}


def engine_session(session_id: str, body: SessionFromConfig, actor: Actor | None,
                   settings: Settings) -> tuple[CotrainConfig, SessionCreate]:
    """The validated config of the new session (its id, the server's checkpoint folder) and the
    JSON create it amounts to, for the checks every create goes through. Raises SessionConfigError
    (422, locations under engineConfig) or PermissionDenied (403)."""
    raw = _read_toml(body.engine_config)
    checkpoint = raw.get("checkpoint")
    if isinstance(checkpoint, dict) and "output_path" in checkpoint:
        _refuse("checkpoint.output_path", "checkpoint.output_path is set by this server (checkpoints go to its "
                "COTRAIN_HOME/models/checkpoints, where it lists and serves them): remove the key and send the "
                "config again.", "server_owned")
    section = raw.setdefault("session", {})
    if isinstance(section, dict):  # (not a table: the schema says so below)
        submitted = section.get("id")
        section["id"] = session_id
        if body.name:
            section["name"] = body.name
        elif "name" not in section:
            section["name"] = submitted if isinstance(submitted, str) else f"Engine config {session_id}"
        if body.description is not None:
            section["description"] = body.description
    try:
        config = validate_config(raw)
    except ConfigError as exc:
        raise SessionConfigError([_problem(p) for p in exc.problems]) from None
    _worker_keys(raw, actor)
    _read_paths(config, actor, settings)
    return config, equivalent_request(config, body)


def _read_toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SessionConfigError([{"loc": ["body", FIELD], "type": "toml_invalid",
                                   "msg": f"engineConfig is not valid TOML ({exc}); fix it (`cotrain config validate "
                                          "FILE` checks a file) and send it again."}]) from None


def _problem(problem: str) -> dict[str, Any]:
    """A ConfigError sentence ("train.batch_size = 0: must be ...") as a 422 item under engineConfig."""
    key = problem.split(" ", 1)[0].rstrip(":")
    return {"loc": ["body", FIELD, *key.split(".")], "msg": problem, "type": "config_invalid"}


def _refuse(key: str, message: str, kind: str) -> None:
    raise SessionConfigError([{"loc": ["body", FIELD, *key.split(".")], "msg": message, "type": kind}])


def leaf_keys(raw: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key the submitted TOML sets ("train.max_steps"); an unknown table is one key."""
    for key, value in raw.items():
        dotted = prefix + str(key)
        if isinstance(value, dict) and dotted in SECTIONS:
            yield from leaf_keys(value, dotted + ".")
        else:
            yield dotted


def _worker_keys(raw: dict[str, Any], actor: Actor | None) -> None:
    if allowed(actor, Action.ENGINE_WORKER_KEYS):
        return
    for key in leaf_keys(raw):
        if key not in MEMBER_KEYS:
            why = WORKER_KEYS_WHY.get(key, "this server does not vet it for members yet")
            require(actor, Action.ENGINE_WORKER_KEYS,
                    f"set {key} in an engine config ({why}); remove it and send the config again")


def _read_paths(config: CotrainConfig, actor: Actor | None, settings: Settings) -> None:
    """model.path, a data.tokenizer path and a checkpoint.resume folder: inside the data roots
    (members), or the data roots and COTRAIN_HOME/models (maintainers and admins)."""
    roots = server_roots(settings)
    any_path = allowed(actor, Action.DATA_ANY_PATH)
    readable = [*roots, resolve(settings.layout.root / "models")] if any_path else roots
    paths = {
        "model.path": config.model.path,
        "data.tokenizer": None if config.data.tokenizer == "train" else config.data.tokenizer,
        "checkpoint.resume": None if config.checkpoint.resume in ("latest", "none") else config.checkpoint.resume,
    }
    for key, value in paths.items():
        if value and not within(resolve(value, settings.layout.root), readable):
            where = "the data roots and models folder" if any_path else "the data roots"
            who = "" if any_path else f" Only {who_may(Action.DATA_ANY_PATH)} may use the models folder too."
            _refuse(key, f"{key} {value!r} is outside {where} of this server ({show_roots(readable)}), after "
                         f"following '..' and symlinks: the worker's engine would refuse it. Put the files inside "
                         f"{'one of them' if len(readable) > 1 else 'it'} and name that path.{who}",
                    "data_path_outside_roots")


def equivalent_request(config: CotrainConfig, body: SessionFromConfig) -> SessionCreate:
    """The JSON create with the config's values for every key both have: checked against the JSON
    schema's hard limits (a 422 names the config key), and what the quota, capacity and data roots
    checks read. `dataConfig.dataset` is carried over as is (the config schema checked it)."""
    sections: dict[str, dict[str, Any]] = {}
    for (section, field), key in FIELD_MAP.items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is None or (section, field) == ("dataConfig", "dataset"):
            continue
        sections.setdefault(section, {})[field] = list(value) if isinstance(value, list) else value
    if config.distributed.strategy != "diloco":
        sections["distributedConfig"] = {k: v for k, v in sections["distributedConfig"].items()
                                         if k in ("nodes", "gpusPerNode", "strategy")}
    elif not config.distributed.diloco.initial_peers:
        sections["distributedConfig"].pop("initialPeers", None)  # the executor then gives the server's DHT
    payload = {
        "name": config.session.name or body.name, "description": config.session.description or "",
        "priority": body.priority, "public": body.public, "autoStart": body.auto_start,
        **({"maxRetries": body.max_retries} if body.max_retries is not None else {}),
        **({"rewardPool": body.reward_pool.model_dump(by_alias=True)} if body.reward_pool else {}),
        **sections,
    }
    try:
        request = SessionCreate.model_validate(payload)
    except ValidationError as exc:
        raise SessionConfigError([_limit_error(e) for e in exc.errors(include_url=False)]) from None
    if config.data.dataset is not None:
        data = request.data_config or DataConfigIn.model_validate({})
        request.data_config = data.model_copy(update={"dataset": config.data.dataset})
    return request


def _limit_error(error: ErrorDetails) -> dict[str, Any]:
    loc = tuple(str(p) for p in error["loc"])
    key = FIELD_MAP.get((loc[0], loc[1])) if len(loc) >= 2 else None
    shown = key or (f"session.{loc[0]}" if loc and loc[0] in ("name", "description") else ".".join(loc))
    return {"loc": ["body", FIELD, *shown.split(".")], "type": error["type"],
            "msg": f"{shown}: {error['msg']}. Change {shown} and send the config again."}


def in_engine_terms(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """422 items of the shared checks (capacity, data roots), located and worded by config key
    (`distributedConfig.gpusPerNode` becomes `distributed.gpus_per_node`)."""
    out = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", [])]
        key = FIELD_MAP.get((loc[1], loc[2])) if len(loc) >= 3 else None
        if key is None:
            out.append(error)
            continue
        out.append({**error, "loc": ["body", FIELD, *key.split(".")], "msg": engine_words(error["msg"])})
    return out


def engine_words(text: str) -> str:
    """A sentence about request fields, with config keys instead ("modelConfig.size" -> "model.size")."""
    for (section, field), key in sorted(FIELD_MAP.items(), key=lambda item: -len(item[0][1])):
        text = text.replace(f"{section}.{field}", key)
    for section, table in (("trainingConfig", "[train]"), ("distributedConfig", "[distributed]"),
                           ("modelConfig", "[model]"), ("dataConfig", "[data]")):
        text = text.replace(section, table)
    return text


def is_engine_session(request: dict[str, Any] | None) -> bool:
    """Whether a stored session was created from an engine config."""
    return request is not None and FIELD in request


def stored_request(request: SessionCreate, text: str) -> dict[str, Any]:
    """What the session row keeps: the equivalent JSON create (read by capacity, the executor and the
    open reward pools) plus the submitted config, as sent."""
    return {**request.model_dump(mode="json", by_alias=True, exclude_none=True), FIELD: text}
