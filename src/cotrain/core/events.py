"""The event stream (docs/architecture.md, "Event stream"), the only thing the core tells the outside world.

`logs/training/<session>/events.jsonl`: one JSON object per line, append-only. Every event has
`type`, `session_id`, `seq` (1, 2, ... across restarts of the same session), `time` (unix
seconds). `status.json` beside it is replaced atomically with the latest state, so a reader
never sees half a file.

Event types and their fields (besides the common ones):
- started:    step, total_steps, resumed_from (checkpoint dir or null), config (the validated
              config as a dict), num_parameters, world_size, device
- progress:   step, total_steps, progress (0-100), loss, participants, epoch, tokens_seen,
              metrics{accuracy, learning_rate, batch_size, tokens_per_second, samples_per_second,
              step_time, mfu, memory_bytes, grad_norm, gpu_utilization (GPU only)},
              system{nodes: one per node / DiLoCo peer (core/system_metrics.py)} once sampled,
              DiLoCo after an outer step: outer_step, params_hash, group_size, round{...}
              (core/strategies/round_metrics.py)
- eval:       step, val_loss, val_perplexity, val_accuracy
- checkpoint: step, path
- peer:       peer_id, event ("joined" | "left" | "progress"), plus the peer's record
- verdict:    round, validator (its peer id), deadline (DHT time), base_hash, seconds, cpu_seconds (validation),
              evidence{commitments, receipts} (by peer id), verdicts[{session_id, round, peer_id, reason, detail,
              scores, tokens}] (p2p/verification.py `Verdict`): a validating DiLoCo peer's judgement of
              every member of one outer round
- completed:  step, final_model_path, val_loss, val_perplexity, val_accuracy, tokens_seen
- failed:     step, error (one meaningful line), traceback (text) or interrupted=true, signal

This module imports nothing heavy (no torch), so the server can read streams cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from cotrain.disk_space import DiskFullError, free_bytes, says_disk_full, size_text


class EventType(StrEnum):
    """An event's `type` (the list above)."""

    STARTED = "started"
    PROGRESS = "progress"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    PEER = "peer"
    VERDICT = "verdict"
    COMPLETED = "completed"
    FAILED = "failed"


EVENT_TYPES = tuple(t.value for t in EventType)
LATEST = {  # status.json keeps the latest event of these types under these keys
    EventType.PROGRESS: "latest_progress", EventType.EVAL: "latest_eval", EventType.CHECKPOINT: "latest_checkpoint",
}
EVENTS_FILE = "events.jsonl"
STATUS_FILE = "status.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON: write a temp file beside it, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:  # a full disk above all: leave no half-written temp file behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class EventWriter:
    """Appends events for one session and keeps `status.json` current."""

    def __init__(self, session_dir: Path, session_id: str):
        self.dir = Path(session_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.session_id = session_id
        self.events_path = self.dir / EVENTS_FILE
        self.status_path = self.dir / STATUS_FILE
        self.seq = last_seq(self.events_path)
        self.status: dict[str, Any] = read_status(self.dir) or {"session_id": session_id}
        self._fh = self.events_path.open("a", buffering=1)  # line-buffered: each event is visible at once
        if _ends_torn(self.events_path):  # a line cut short (a crash, a full disk): end it, so the next is whole
            self._fh.write("\n")

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}; one of {EVENT_TYPES}")
        self.seq += 1
        event = {"type": type_, "session_id": self.session_id, "seq": self.seq, "time": time.time(), **fields}
        try:
            self._fh.write(json.dumps(event, separators=(",", ":"), default=_jsonable) + "\n")
            self._update_status(event)
        except OSError as exc:
            if says_disk_full(exc):  # one sentence for the user, not a traceback (issue 18)
                free = free_bytes(self.dir)
                raise DiskFullError(
                    f"The disk is full: the event stream {self.events_path} could not be written "
                    f"({size_text(free)} free there); free space and retry to resume from the last checkpoint",
                    self.dir, free,
                ) from exc
            raise
        return event

    def _update_status(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        state = {
            EventType.STARTED: "running",
            EventType.COMPLETED: "completed",
            EventType.FAILED: "interrupted" if event.get("interrupted") else "failed",
        }.get(kind)
        if state:
            self.status["state"] = state
        if kind == EventType.STARTED:
            self.status.pop("error", None)
            self.status["pid"] = os.getpid()
        if kind in LATEST:
            self.status[LATEST[kind]] = event
        elif kind == EventType.FAILED:
            self.status["error"] = event.get("error")
        for key in ("step", "total_steps", "progress"):
            if key in event:
                self.status[key] = event[key]
        self.status.update(session_id=self.session_id, seq=self.seq, updated=event["time"])
        write_json_atomic(self.status_path, self.status)

    def close(self) -> None:
        if not self._fh.closed:
            with contextlib.suppress(OSError):  # an event a full disk refused is already reported; closing still ends
                self._fh.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _ends_torn(events_path: Path) -> bool:
    """The file's last line has no newline (its writer was cut off mid-line)."""
    with events_path.open("rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def last_seq(events_path: Path) -> int:
    """The `seq` of the last complete line (a torn last line from a crash is ignored)."""
    if not events_path.exists():
        return 0
    with events_path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65536))
        lines = fh.read().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def read_status(session_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(session_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_events(session_dir: Path, after_seq: int = 0) -> Iterator[dict[str, Any]]:
    path = Path(session_dir) / EVENTS_FILE
    if not path.exists():
        return
    with path.open() as fh:
        for line in fh:
            if not line.endswith("\n"):
                return  # being written right now
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("seq", 0) > after_seq:
                yield event


class EventFollower:
    """Tails an events.jsonl incrementally: `poll()` returns the complete lines added since the
    last call. Survives the file not existing yet; never returns a half-written line."""

    def __init__(self, session_dir: Path, after_seq: int = 0):
        self.path = Path(session_dir) / EVENTS_FILE
        self.offset = 0
        self.after_seq = after_seq
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("seq", 0) > self.after_seq:
                self.after_seq = event["seq"]
                events.append(event)
        return events
