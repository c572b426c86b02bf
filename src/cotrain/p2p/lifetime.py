"""Helper processes that die with the process that started them.

hivemind runs the DHT node, the averager and the p2pd daemon as forked processes. When the
training process is killed with SIGKILL they would live on as orphans (still answering on the
network). Inside `dies_with_parent()`, every process forked from this one asks Linux to SIGKILL
it when its parent exits (prctl PR_SET_PDEATHSIG); children of those children (p2pd) inherit the
rule, so a killed peer leaves nothing behind. Elsewhere than Linux it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from cotrain.parent_death import signal_when_parent_dies

_active = False
_registered = False


def _in_child() -> None:
    if _active and signal_when_parent_dies(signal.SIGKILL) and os.getppid() == 1:
        os._exit(1)  # the parent already died between fork and prctl


@contextlib.contextmanager
def dies_with_parent() -> Iterator[None]:
    """Processes forked inside this block from the main thread die when this process does."""
    global _active, _registered
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        # Linux signals a child when the *thread* that forked it ends: only the main thread lives
        # as long as the process (a server starting its DHT from a worker thread must not use it)
        yield
        return
    if not _registered:
        os.register_at_fork(after_in_child=_in_child)
        _registered = True
    _active = True
    try:
        yield
    finally:
        _active = False
