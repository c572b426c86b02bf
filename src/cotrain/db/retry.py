"""Riding out a database outage (issue 18): one policy for every loop that talks to the database.

A loop that meets a lost connection (PostgreSQL restarted, the network dropped, SQLite busy) waits
and tries again, with a delay that doubles from FIRST_DELAY_S up to MAX_DELAY_S, for as long as the
outage lasts: it never gives up on a live run. The delay is capped so that the server catches up
within a couple of seconds of the database's return. Any other error is the caller's to handle.

The outage is logged once per process (`OUTAGE`): a warning when the first loop meets it, naming
that loop, and one line when the database answers again, with how long it was gone. Retries in
between are silent, so a 10-minute outage is two log lines, not thousands.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 1.0  # a loop notices the database's return within a second
OUTAGE_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached (worth waiting out), not a bad statement."""
    if isinstance(exc, OUTAGE_ERRORS):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Backoff:
    """The waits between tries: FIRST_DELAY_S, doubling, never above MAX_DELAY_S; `reset` after a success."""

    def __init__(self, first_s: float = FIRST_DELAY_S, cap_s: float = MAX_DELAY_S):
        self.first_s = first_s
        self.cap_s = cap_s
        self._next = first_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        self._next = self.first_s


class OutageLog:
    """Whether the database is down, as the loops of this process last found it; logs each change once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic time of the first failure of the current outage

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, where: str, exc: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.warning("the database did not answer (%s: %s); every loop waits and retries (at most %g s apart) "
                    "until it does", where, _first_line(exc), MAX_DELAY_S)

    def answered(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("the database answers again after %.1f s; catching up", time.monotonic() - since)


OUTAGE = OutageLog()


async def retry_db(where: str, step: Callable[..., T], *args: object) -> T:
    """`step(*args)` in a thread, tried again with backoff for as long as the database is unreachable.
    `where` names the loop in the outage's log line. Other errors propagate at once."""
    backoff = Backoff()
    while True:
        try:
            result = await asyncio.to_thread(step, *args)
        except Exception as exc:
            if not is_outage(exc):
                raise
            OUTAGE.failed(where, exc)
            await asyncio.sleep(backoff.next_delay())
            continue
        OUTAGE.answered()
        return result


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
