"""A full disk, told apart from other write failures and said in one sentence (issue 18).

Writers do not agree on how they report a full disk: Python raises OSError(ENOSPC), safetensors a
SafetensorError quoting "os error 28", torch.save a RuntimeError about a file position, SQLite
"database or disk is full", PostgreSQL SQLSTATE 53100. So a failed write is called a full disk when
its error says so, or when the filesystem it wrote to has (next to) nothing left. Imports nothing heavy:
the engine and the server both use it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

NEARLY_FULL_BYTES = 1 << 20  # less than this left after a failed write: the write ran out of space
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_WORDS = ("no space left on device", "os error 28", "database or disk is full", "disk quota exceeded",
               "could not extend file", "disk full")


class DiskFullError(OSError):
    """A write that did not fit; `str()` is the sentence for the user (no traceback)."""

    def __init__(self, sentence: str, path: Path, free: int):
        super().__init__(errno.ENOSPC, sentence, str(path))
        self.sentence, self.path, self.free = sentence, path, free

    def __str__(self) -> str:
        return self.sentence


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding `path` (or its nearest parent)."""
    stats = _statvfs(path)
    return 0 if stats is None else stats.f_bavail * stats.f_frsize


def surely_too_small(path: Path, needed: int) -> bool:
    """The filesystem holding `path` reports its size and has less than `needed` bytes free (some network
    and FUSE filesystems report no size at all: those are never called too small in advance)."""
    stats = _statvfs(path)
    return stats is not None and stats.f_blocks > 0 and stats.f_bavail * stats.f_frsize < needed


def _statvfs(path: Path) -> os.statvfs_result | None:
    for candidate in (Path(path), *Path(path).parents):
        try:
            return os.statvfs(candidate)
        except OSError:
            continue
    return None


def says_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from) reports a full disk or an exhausted quota."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        text = str(seen).lower()
        if any(word in text for word in _FULL_WORDS) or getattr(seen, "pgcode", None) == "53100":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """`exc` from writing under `path` ran out of space: it says so, or the filesystem is (nearly) full."""
    return says_disk_full(exc) or free_bytes(path) < NEARLY_FULL_BYTES


def size_text(count: int) -> str:
    """`count` bytes, exactly and readably: "40960 bytes (40.0 KiB)"."""
    value, unit = float(count), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{count} bytes" if unit == "bytes" else f"{count} bytes ({value:.1f} {unit})"
