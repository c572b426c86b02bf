"""The engines this worker started, on its own disk: what a worker killed with SIGKILL left behind.

An engine runs in its own process group and outlives its worker, so a restarted worker can re-attach
to it (`Executor.reconcile`). When the worker stays away longer than COTRAIN_HEARTBEAT_TIMEOUT, its
sessions move to other workers (run_lease.py) and the engine it left running is an orphan: it still
uses this machine's GPUs and would write checkpoints next to the new owner's. The database no
longer names it (the row holds the new owner), so each worker keeps one file per run it started,
COTRAIN_HOME/workers/<worker id>/runs/<session id>.json, and on restart ends every engine listed
there that it does not re-attach to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from cotrain.server.processes import engine_alive


@dataclass(frozen=True)
class LedgerEntry:
    session_id: str
    pid: int
    config_path: str
    attempt: int


Entry = TypeVar("Entry")


class WorkerLedger(Generic[Entry]):
    """One JSON file per session, COTRAIN_HOME/workers/<worker digest>/<subfolder>/<session id>.json, written
    atomically: what a worker must still know of its runs after it was killed (each kind of run a subclass)."""

    subfolder: ClassVar[str]
    entry_type: ClassVar[Any]  # the dataclass of an entry

    def __init__(self, root: Path, worker_id: str):
        # the worker id is free text (host:COTRAIN_HOME by default): a digest makes it a folder name
        self.folder = root / "workers" / hashlib.sha256(worker_id.encode()).hexdigest()[:16] / self.subfolder

    def record(self, entry: Entry) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{entry.session_id}.json"  # type: ignore[attr-defined]
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(asdict(entry)))  # type: ignore[call-overload]
        temp.replace(path)

    def forget(self, session_id: str) -> None:
        (self.folder / f"{session_id}.json").unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        found = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else ():
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(self.entry_type(**json.loads(path.read_text())))
        return found


class RunLedger(WorkerLedger[LedgerEntry]):
    subfolder = "runs"
    entry_type = LedgerEntry

    def end_orphans(self, keep: set[str]) -> list[LedgerEntry]:
        """SIGKILL the process group of every listed engine still alive whose session is not in `keep`
        (the runs re-attached to); forget those entries. Returns the engines killed."""
        killed = []
        for entry in self.entries():
            if entry.session_id in keep:
                continue
            if engine_alive(entry.pid, entry.config_path):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry.pid, signal.SIGKILL)
                killed.append(entry)
            self.forget(entry.session_id)
        return killed
