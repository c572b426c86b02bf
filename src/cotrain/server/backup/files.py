"""The session files: what the runs wrote under COTRAIN_HOME (checkpoints, final models, logs, the
configs the server generated), indexed by a backup and optionally copied.

Whether they are copied: `--with-files` (the default for a SQLite home, where one machine holds
everything) copies them beside the database; `--without-files` (the default with PostgreSQL, where
the models usually live on shared storage or worker disks that have their own snapshots) writes only
their index, so a restore can say which are missing. Either way the index has every file's size
and sha256.

A file is read once: the copy and its checksum come from the same bytes, so a checkpoint written
during the backup cannot make the manifest disagree with the copy. A file that disappears meanwhile (a
rotated checkpoint) is left out; symlinks are not followed (a home's `datasets` link, say).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cotrain.server.backup.manifest import CHUNK, SESSION_TREES, Entry

Progress = Callable[[int], None]  # called with the bytes just read


def walk(home: Path) -> Iterator[tuple[str, Path]]:
    """(path relative to home, path) of every regular file in the session trees, no link followed."""
    for tree in SESSION_TREES:
        top = home / tree
        if top.is_symlink() or not top.is_dir():
            continue
        for folder, dirs, names in os.walk(top, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                if path.is_file() and not path.is_symlink():
                    yield path.relative_to(home).as_posix(), path


def total_bytes(home: Path) -> int:
    total = 0
    for _, path in walk(home):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def _copy(source: Path, target: Path | None, progress: Progress) -> tuple[int, str]:
    """Read `source` once, writing it to `target` when given; (size, sha256) of the bytes read."""
    digest = hashlib.sha256()
    size = 0
    out = None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = target.open("wb")
    try:
        with source.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
                progress(len(chunk))
    finally:
        if out is not None:
            out.close()
    return size, digest.hexdigest()


def index_files(home: Path, copy_to: Path | None, progress: Progress) -> list[Entry]:
    """The index of the session files under `home`, each copied to `copy_to/<its path>` when given."""
    entries = []
    for relative, path in walk(home):
        target = copy_to / relative if copy_to is not None else None
        try:
            size, digest = _copy(path, target, progress)
        except FileNotFoundError:
            if target is not None:
                target.unlink(missing_ok=True)
            continue
        entries.append(Entry(path=relative, size=size, sha256=digest))
    return entries


def place(source: Path, target: Path) -> None:
    """Write one restored file: a temp file beside `target`, then a rename (never half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.restoring")
    with source.open("rb") as handle, temp.open("wb") as out:
        while chunk := handle.read(CHUNK):
            out.write(chunk)
    os.replace(temp, target)
