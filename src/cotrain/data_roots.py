"""Data roots: the directories a training run may read its data from.

`COTRAIN_DATA_ROOTS` lists them, separated by commas or colons (so a root cannot contain either);
unset or empty, it is `COTRAIN_HOME/datasets/raw`. Whether a path lies inside a root is decided on
resolved paths, never on strings: `~` is expanded, a relative path is joined to the directory it
will be opened from, then every symlink is followed (`os.path.realpath`) on both sides, and the
path's components must begin with the root's. So `root/../etc`, a symlink inside a root that
points out of it, and `/data/raw-private` beside a root `/data/raw` are all outside.

Two places apply the rule, each on its own machine:
- the server, when a session is created or edited (`cotrain.server.data_roots`): a member's
  `dataPath` outside the server's roots is a 422 naming them; maintainers and admins may use any
  path, and that approval is kept on the session so the worker honours exactly that path;
- the engine, when a worker runs it (`cotrain.core.path_guard`): a config whose paths leave the
  worker's own roots fails at start, whatever the server sent.

This module imports nothing but the standard library and `cotrain.paths`, so the server and the
engine share it without either importing the other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

ENV = "COTRAIN_DATA_ROOTS"
_SEPARATORS = re.compile(r"[,:]")


def parse_roots(text: str) -> list[str]:
    """The entries of a COTRAIN_DATA_ROOTS value, in order, blanks dropped."""
    return [part.strip() for part in _SEPARATORS.split(text or "") if part.strip()]


def join_roots(roots: Iterable[Path | str]) -> str:
    """A COTRAIN_DATA_ROOTS value for `roots` (for a child process's environment)."""
    return ",".join(str(root) for root in roots)


def default_root(home: Path) -> Path:
    """`COTRAIN_HOME/datasets/raw` (see cotrain.paths.Layout.raw_data)."""
    return home / "datasets" / "raw"


def data_roots(environ: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """The resolved data roots that `environ` (default: this process's) sets, or the default under
    `home` (default: its COTRAIN_HOME). Relative entries are taken from the current directory."""
    from cotrain.paths import cotrain_home

    environ = os.environ if environ is None else environ
    entries = parse_roots(environ.get(ENV, ""))
    if not entries:
        if home is None:
            home = Path(environ["COTRAIN_HOME"]).expanduser() if environ.get("COTRAIN_HOME") else cotrain_home()
        entries = [str(default_root(home))]
    return unique([resolve(entry) for entry in entries])


def resolve(path: str | Path, base: Path | None = None) -> Path:
    """`path` as the file system will open it: `~` expanded, joined to `base` (default: the current
    directory) when relative, `..` and every symlink resolved; a path that does not exist yet
    resolves as far as it exists."""
    expanded = Path(os.path.expanduser(str(path)))
    if not expanded.is_absolute():
        expanded = (base if base is not None else Path.cwd()) / expanded
    return Path(os.path.realpath(expanded))


def within(resolved: Path, roots: Iterable[Path]) -> bool:
    """Whether the resolved path is one of the resolved `roots` or lies below one, by components."""
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def outside(path: str | Path, roots: Iterable[Path], base: Path | None = None) -> Path | None:
    """The resolved path when `path` lies outside every root, else None."""
    resolved = resolve(path, base)
    return None if within(resolved, list(roots)) else resolved


def escaping_links(directory: Path, roots: list[Path]) -> list[tuple[Path, Path]]:
    """Symlinks below `directory` whose targets leave `roots`, as (link, target): a folder inside a
    root can still hold `leak.txt -> /etc/shadow`. Walks the whole tree without following links
    (only names are read; reading the data later costs far more)."""
    found: list[tuple[Path, Path]] = []
    for top, dirs, files in os.walk(directory, followlinks=False):
        for name in (*dirs, *files):
            entry = Path(top) / name
            if entry.is_symlink():
                target = Path(os.path.realpath(entry))
                if not within(target, roots):
                    found.append((entry, target))
    return found


def show_roots(roots: Iterable[Path]) -> str:
    """'/a, /b' for sentences."""
    return ", ".join(str(root) for root in roots) or "(none)"


def unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
