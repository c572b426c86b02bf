"""The tail of a run's stdout/stderr, from this machine's disk or, for a run on another machine's
`cotrain worker`, from the database, where that worker keeps the last lines as it follows the run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy.orm import Session

from cotrain.server.orm import SessionLogTail

STREAMS = ("stderr", "stdout")
KEPT_LINES = 200  # the rolling tail kept in the database, per stream
MAX_LINE = 2000  # characters of one kept line (a progress bar without newlines stays bounded)
READ_BYTES = 256 * 1024


def read_tail(path: Path, lines: int) -> list[str] | None:
    """The last `lines` lines of a log file; None when it is not on this machine."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - READ_BYTES))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    return text.splitlines()[-lines:]


def keep_tail(db: Session, session_id: str, stream: str, worker_id: str, lines: list[str]) -> None:
    """Store the newest `KEPT_LINES` lines of `stream` as the session's tail (replacing the last one)."""
    kept = [line[:MAX_LINE] for line in lines[-KEPT_LINES:]]
    row = db.get(SessionLogTail, (session_id, stream))
    if row is None:
        db.add(SessionLogTail(session_id=session_id, stream=stream, worker_id=worker_id, lines=kept,
                              updated_at=time.time()))
    else:
        row.worker_id, row.lines, row.updated_at = worker_id, kept, time.time()


def kept_tail(db: Session, session_id: str, stream: str) -> SessionLogTail | None:
    return db.get(SessionLogTail, (session_id, stream))


class TailKeeper:
    """What one run's follower stores: a stream is read and written only when its file changed."""

    def __init__(self, session_dir: Path):
        self.session_dir = session_dir
        self._seen: dict[str, tuple[int, int]] = {}

    def changed(self) -> dict[str, list[str]]:
        out = {}
        for stream in STREAMS:
            path = self.session_dir / f"{stream}.log"
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(stream) != signature:
                lines = read_tail(path, KEPT_LINES)
                if lines is not None:
                    self._seen[stream] = signature
                    out[stream] = lines
        return out

    def forget(self) -> None:
        """The last store failed (the database was away): the next `changed` returns every stream again."""
        self._seen.clear()
