"""A real small filesystem for full-disk tests (issue 18): a tmpfs of a few MiB mounted on a folder.

Mounting needs root (or CAP_SYS_ADMIN); without it the test is skipped with the reason, and fails
under CI=true (tests.conftest.missing_service). `ballast` fills what is left, so the next write fails
with ENOSPC exactly as on a full production disk.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import missing_service


@contextmanager
def small_disk(folder: Path, size_mib: int) -> Iterator[Path]:
    """`folder` (created, and empty) as a tmpfs of `size_mib` MiB for the block; unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        missing_service("full-disk tests mount a small tmpfs, which needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        missing_service(f"mounting a tmpfs on {folder} was refused: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Write a ballast file in `folder` until its filesystem has at most `leave_bytes` free; returns it."""
    ballast = folder / "ballast.bin"
    stats = os.statvfs(folder)
    size = max(0, stats.f_bavail * stats.f_frsize - leave_bytes)
    chunk = b"\0" * (1 << 20)
    with ballast.open("wb", buffering=0) as fh:
        try:
            while size > 0:
                size -= fh.write(chunk[: min(size, len(chunk))])
        except OSError:  # the last chunk did not fit: full is what we wanted
            pass
    return ballast
