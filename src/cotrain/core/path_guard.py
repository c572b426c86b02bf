"""The engine's side of the data roots (see cotrain.data_roots): a run started for the platform
reads and writes only where this machine's operator allows, whatever its config says.

Why in the engine too: the server checks a member's `dataPath` against the server's roots, but the
config a worker runs comes from the database; a config edited by hand, or sent by a compromised
server, must not make a worker read its own /etc. So the engine checks its config against the roots
of ITS machine (the environment of the process), before it reads any data.

When the check applies:
- `COTRAIN_ENFORCE_DATA_ROOTS=1`: the executor (`cotrain up` / `cotrain worker`) sets it on every
  run it starts. `cotrain train CONFIG` typed by a person on their own machine does not: the paths
  in a config they wrote are their own choice.
- `COTRAIN_ALLOW_ANY_DATA_PATH=1` (the worker operator's switch) turns the check off.
- The roots are `COTRAIN_DATA_ROOTS` (default `COTRAIN_HOME/datasets/raw`); a worker operator
  widens them there. For a session that a maintainer or admin approved with a path outside the
  roots, the executor adds exactly that approved path to the run's COTRAIN_DATA_ROOTS.

What is checked (after `~`, `..` and symlinks are resolved, against resolved roots):
- `data.data_path` inside a data root, and no symlink below it (when it is a folder) leading out;
  the same for the save_to_disk folder of `data.dataset = "hf:/path"` (cotrain.config.hf_spec; a
  dataset named `hf:NAME` is read from this machine's own Hugging Face cache, which its operator set);
- `model.path`, a `data.tokenizer` path and a `checkpoint.resume` directory inside a data root or
  `COTRAIN_HOME/models` (where checkpoints and final models live);
- `checkpoint.output_path` (written to) inside `COTRAIN_HOME/models`.
A refusal is a `DataRootError` (a ConfigError): the run writes a `failed` event with one sentence
naming the path, the roots and how to widen them, and exits 2 (no retry).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cotrain.config import ConfigError, CotrainConfig
from cotrain.config.env_settings import EngineSettings
from cotrain.config.hf_spec import hf_path
from cotrain.data_roots import ENV, data_roots, escaping_links, resolve, show_roots, unique, within

ENFORCE_ENV = "COTRAIN_ENFORCE_DATA_ROOTS"
ALLOW_ANY_ENV = "COTRAIN_ALLOW_ANY_DATA_PATH"
WIDEN = (f"have this machine's operator add its folder to {ENV} (or set {ALLOW_ANY_ENV}=1 on the worker "
         "to allow any path)")


class DataRootError(ConfigError):
    """A path of the config leaves the roots; str() is one line of sentences, no traceback."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        self.source = None
        Exception.__init__(self, " ".join(problems))


def enforced(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the run's paths are checked: the executor enforced the roots and the operator did not
    allow any path (EngineSettings, read from `environ`, default this process's)."""
    engine = EngineSettings.from_env() if environ is None else EngineSettings.from_mapping(environ)
    return engine.enforce_data_roots and not engine.allow_any_data_path


def check_config_paths(config: CotrainConfig, environ: Mapping[str, str] | None = None,
                       cwd: Path | None = None) -> None:
    """Raise DataRootError when the run is enforced and a path of `config` leaves its roots."""
    environ = os.environ if environ is None else environ
    if not enforced(environ):
        return
    home = _home(environ)
    roots = data_roots(environ, home)
    models = [resolve(home / "models")]
    problems: list[str] = []

    def check(key: str, value: str | None, allowed: list[Path], what: str, how: str = WIDEN) -> Path | None:
        if not value:
            return None
        resolved = resolve(value, cwd)
        if within(resolved, allowed):
            return resolved
        shown = repr(value) if Path(value) == resolved else f"{value!r} (which resolves to {resolved})"
        problems.append(f"{key} = {shown} is outside {what} of this machine ({show_roots(allowed)}): put it "
                        f"inside {'one of them' if len(allowed) > 1 else 'it'}, or {how}.")
        return None

    for key, value in (("data.data_path", config.data.data_path), ("data.dataset", hf_path(config.data.dataset))):
        folder = check(key, value, roots, "the data roots")
        if folder is not None and folder.is_dir():
            for link, target in escaping_links(folder, roots)[:3]:
                problems.append(f"{key} {value!r} holds the symlink {link}, which leads to {target}, outside the "
                                f"data roots of this machine ({show_roots(roots)}): remove the link or copy the file "
                                f"into a data root, or {WIDEN}.")
    readable = unique([*roots, *models])
    check("model.path", config.model.path, readable, "the data roots and models folder")
    if config.data.tokenizer != "train":
        check("data.tokenizer", config.data.tokenizer, readable, "the data roots and models folder")
    if config.checkpoint.resume not in ("latest", "none"):
        check("checkpoint.resume", config.checkpoint.resume, readable, "the data roots and models folder")
    check("checkpoint.output_path", config.checkpoint.output_path, models, "the models folder",
          f"leave it unset (checkpoints go to COTRAIN_HOME/models/checkpoints), or have this machine's operator set "
          f"{ALLOW_ANY_ENV}=1 on the worker to allow any path")
    if problems:
        raise DataRootError(problems)


def _home(environ: Mapping[str, str]) -> Path:
    from cotrain.paths import cotrain_home

    value = environ.get("COTRAIN_HOME")
    return Path(value).expanduser().resolve() if value else cotrain_home()
