"""The server's side of the data roots (see cotrain.data_roots): which file-system paths a session
may name, decided when it is created or edited.

The only paths a create or edit body can carry are `dataConfig.dataPath` and the save_to_disk folder
of `dataConfig.dataset = "hf:/path"` (cotrain.config.hf_spec; `hf:NAME` names a dataset of the
worker's own Hugging Face cache, not a path): the request schema forbids unknown keys, so `model.path`,
`data.tokenizer`, `checkpoint.output_path` and `checkpoint.resume` cannot be set through the API at all
(a 422 naming the field). A `dataPath` (or that folder) is resolved the way the engine will open it
(relative to COTRAIN_HOME, where the executor starts runs; `~`, `..` and symlinks followed) and must lie
inside one of the server's `COTRAIN_DATA_ROOTS`; otherwise a member gets a 422 naming the roots. Maintainers and admins
(`Action.DATA_ANY_PATH`) may use any path: their approval is stored on the session
(`data_path_approval`) and the executor adds exactly the approved path to the run's roots, since
the engine checks again against its own machine's roots (cotrain.core.path_guard).

An approval survives an edit that keeps the same resolved path (the owner may still change the
learning rate of a session an admin pointed at /srv/corpus), and is dropped when the path moves
back inside the roots.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotrain.config.hf_spec import hf_path
from cotrain.data_roots import ENV, data_roots, resolve, show_roots, within
from cotrain.server.config_generator import SessionConfigError
from cotrain.server.permissions import Action, allowed, who_may

if TYPE_CHECKING:
    from cotrain.server.auth import Actor
    from cotrain.server.schemas import SessionCreate
    from cotrain.server.settings import Settings


def server_roots(settings: Settings) -> list[Path]:
    """The data roots of this server (settings.data_roots, else the default under its COTRAIN_HOME)."""
    return list(getattr(settings, "data_roots", None) or data_roots({}, settings.layout.root))


def check_data_path(
    body: SessionCreate, actor: Actor | None, settings: Settings, previous: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The session's approval record: None when it names no path outside the roots, the previous
    approval when it still covers the path, a new one when `actor` may use any path. Raises
    SessionConfigError (422 on dataConfig.dataPath or dataConfig.dataset, naming the roots) otherwise."""
    data = body.data_config
    return check_source_paths(data.data_path if data else None, data.dataset if data else None, actor, settings,
                              previous)


def check_source_paths(
    data_path: str | None, dataset: str | None, actor: Actor | None, settings: Settings,
    previous: dict[str, Any] | None = None, loc: tuple[str, ...] = ("body", "dataConfig"),
    keys: tuple[str, str] = ("dataPath", "dataset"),
) -> dict[str, Any] | None:
    """`check_data_path` on the two values a config reads data from (`data.data_path`, `data.dataset`),
    for any body that carries them: `loc` and `keys` name them in the 422 (a full engine config
    passes its own)."""
    if data_path:
        key, value, path = keys[0], data_path, data_path
    elif (folder := hf_path(dataset)) is not None:
        key, value, path = keys[1], str(dataset), folder
    else:
        return None
    shown = ".".join([*loc[1:], key])
    roots = server_roots(settings)
    resolved = resolve(path, settings.layout.root)
    if within(resolved, roots):
        return None
    if previous and previous.get("path") == str(resolved):
        return previous
    if actor is None or not allowed(actor, Action.DATA_ANY_PATH):
        # the resolved path is not shown: it would tell a member where the server's symlinks lead
        names = f"{shown} {value!r}" + ("" if value == path else f" names the folder {path!r}, which")
        message = (
            f"{names} is outside the data roots of this server ({show_roots(roots)}), "
            f"after following '..' and symlinks: put the data inside one of them and name that path; only "
            f"{who_may(Action.DATA_ANY_PATH)} may use other paths, and the server's operator widens the roots "
            f"with {ENV}."
        )
        raise SessionConfigError([{"loc": [*loc, key], "msg": message, "type": "data_path_outside_roots"}])
    return {key: value, "path": str(resolved), "by": actor.label, "role": actor.role.value, "at": time.time()}


def run_roots(settings: Settings, approval: dict[str, Any] | None) -> list[Path]:
    """The roots a run of this session gets on this worker: the worker's own, plus the approved path."""
    roots = server_roots(settings)
    if approval and approval.get("path"):
        approved = Path(approval["path"])
        if approved not in roots:
            roots.append(approved)
    return roots
