"""Linux's parent-death signal: a process asks to be signalled when its parent exits, however the
parent exits (even by SIGKILL), so nothing it was started for outlives it as an orphan."""

from __future__ import annotations

import contextlib
import ctypes
import sys

PR_SET_PDEATHSIG = 1


def signal_when_parent_dies(signum: int) -> bool:
    """Ask Linux to send this process `signum` when its parent exits (prctl PR_SET_PDEATHSIG).
    False where that is not available (not Linux): the process then outlives a killed parent."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum) == 0
    return False
