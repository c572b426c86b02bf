"""The audit log: one append-only row per state-changing request or security event, hash-chained like
the contribution ledger (cotrain.hashchain), so an edited, deleted or reordered row is detected.

    entry_hash = link_hash("AuditEntry", (id, time_us, actor, role, action, target, outcome, client_ip,
                                          request_id, canonical_json(detail)), prev_hash)

Ids are consecutive (the appender sets them), so a deleted row leaves a gap as well as a broken link.
Appends are serialised across threads, processes and API replicas: PostgreSQL takes a transaction-level
advisory lock, SQLite a `BEGIN IMMEDIATE` write lock, and the primary key refuses a second row with the
same id should anything slip through (the append is then retried on the new head). Every row is also
appended as one JSON line to COTRAIN_HOME/logs/system/audit.log, a second witness `verify` compares the
database with: someone who can write the database can recompute the whole chain after a row they
changed, but not the copy on the server's disk (nor the newest rows they deleted).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, Table, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cotrain.hashchain import GENESIS, canonical_json, link_hash, micros
from cotrain.paths import Layout
from cotrain.server.orm import AuditEntry

log = logging.getLogger("cotrain.audit")

class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"

SYSTEM = "system"  # actor and role of events no request caused (payouts)
ANONYMOUS = "anonymous"
KIND = "AuditEntry"
LOG_NAME = "audit.log"
_PG_LOCK_ID = 0x61756474  # "audt": the advisory lock of appends on PostgreSQL (the ledger's is another)
_TABLE = cast(Table, AuditEntry.__table__)  # a declarative class's table (typed as any FromClause)
_LIMITS = {"actor": 100, "role": 16, "action": 60, "target": 200, "outcome": 16, "client_ip": 64, "request_id": 64}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# keys whose values are never written to the log, at any depth of `detail`
_SECRET_KEY = re.compile(r"token|signature|secret|password|authorization|cookie|private|full_?message", re.I)
_APPEND_TRIES = 8
_process_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.RLock()


def _reader(row: dict[str, Any] | AuditEntry) -> Callable[[str], Any]:
    """A column's value by name, from a row's values or from the ORM entry."""
    if isinstance(row, dict):
        return row.get
    return lambda name: getattr(row, name)


def entry_digest(row: dict[str, Any] | AuditEntry, prev_hash: str) -> str:
    """The hash of one audit entry (a row or its column values) chained to `prev_hash`."""
    get = _reader(row)
    return link_hash(KIND, (
        int(get("id")), micros(float(get("time"))), get("actor"), get("role"), get("action"), get("target"),
        get("outcome"), get("client_ip"), get("request_id"), canonical_json(get("detail") or {}),
    ), prev_hash)


def _clean(value: Any, limit: int) -> str:
    """One line of text that fits its column (PostgreSQL refuses NUL, the chain hashes what is stored)."""
    return _CONTROL.sub(" ", str(value or ""))[:limit]


def scrub(detail: Any) -> Any:
    """`detail` as plain JSON with every secret-looking key's value replaced, so a careless caller
    cannot put a token or signature into the log."""
    if isinstance(detail, dict):
        return {str(k): ("[redacted]" if _SECRET_KEY.search(str(k)) else scrub(v)) for k, v in detail.items()}
    if isinstance(detail, list | tuple):
        return [scrub(v) for v in detail]
    if isinstance(detail, str):
        return _CONTROL.sub(" ", detail)[:1000]
    if detail is None or isinstance(detail, bool | int | float):
        return detail
    return str(detail)[:1000]


def _process_lock(engine: Engine) -> threading.Lock:
    key = engine.url.render_as_string(hide_password=True)
    with _locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


def system_log_path() -> Path:
    """COTRAIN_HOME/logs/system/audit.log."""
    return Layout.from_env().system_logs / LOG_NAME


@dataclass
class VerifyReport:
    entries: int = 0
    head: str = GENESIS
    first_bad: int | None = None  # the id of the first entry that is wrong (or missing)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad(self, entry_id: int, problem: str) -> None:
        if self.first_bad is None:
            self.first_bad = entry_id
        if len(self.problems) < 50:
            self.problems.append(problem)


class AuditLog:
    """Appends to and checks the audit log of one database. `source` is an engine or a session factory;
    `log_path` the JSON-lines copy (default COTRAIN_HOME/logs/system/audit.log; None in `copy=False`)."""

    def __init__(self, source: Engine | sessionmaker[Session], log_path: Path | None = None, copy: bool = True):
        self.engine: Engine = source if isinstance(source, Engine) else source.kw["bind"]
        self.log_path = (log_path or system_log_path()) if copy else None
        self._lock = _process_lock(self.engine)
        self._file_lock = threading.Lock()

    # ---- appending -------------------------------------------------------------------------------

    def record(self, action: str, *, actor: str = ANONYMOUS, role: str = ANONYMOUS, target: str = "",
               outcome: str = Outcome.OK, client_ip: str = "", request_id: str = "",
               detail: dict[str, Any] | None = None, at: float | None = None) -> dict[str, Any]:
        """Append one entry (its own transaction) and its JSON line; returns the row's values."""
        values: dict[str, Any] = {
            "time": round(at if at is not None else time.time(), 6),
            "actor": actor, "role": role, "action": action, "target": target, "outcome": outcome,
            "client_ip": client_ip, "request_id": request_id,
        }
        for name, limit in _LIMITS.items():
            values[name] = _clean(values[name], limit)
        values["detail"] = json.loads(canonical_json(scrub(detail or {})))  # exactly what reads back
        for attempt in range(_APPEND_TRIES):
            try:
                with self._lock:
                    row = self._append(values)
                break
            except IntegrityError:  # another process appended the same id first: chain onto the new head
                if attempt == _APPEND_TRIES - 1:
                    raise
            except OperationalError as exc:  # SQLite busy past its timeout
                if attempt == _APPEND_TRIES - 1 or "locked" not in str(exc).lower():
                    raise
                time.sleep(0.05 * (attempt + 1))
        self._write_line(row)
        return row

    def record_safely(self, action: str, **fields: Any) -> dict[str, Any] | None:
        """`record`, but a failure is logged loudly instead of raised: auditing never breaks the work."""
        try:
            return self.record(action, **fields)
        except Exception as exc:
            log.error("AUDIT WRITE FAILED: %s by %s on %r (%s) was not recorded: %s: %s", action,
                      fields.get("actor", ANONYMOUS), fields.get("target", ""), fields.get("outcome", Outcome.OK),
                      exc.__class__.__name__, exc)
            return None

    def _append(self, values: dict[str, Any]) -> dict[str, Any]:
        with self.engine.connect() as conn:
            dialect = conn.dialect.name
            if dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before reading the head
            elif dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
            head = conn.execute(select(_TABLE.c.id, _TABLE.c.entry_hash).order_by(_TABLE.c.id.desc()).limit(1)).first()
            row = {**values, "id": 1 if head is None else head.id + 1}
            row["prev_hash"] = GENESIS if head is None else head.entry_hash
            row["entry_hash"] = entry_digest(row, row["prev_hash"])
            conn.execute(insert(_TABLE).values(**row))
            conn.commit()
        return row

    def _write_line(self, row: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        line = (canonical_json(row) + "\n").encode()
        try:
            with self._file_lock:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)  # one write of one line: replicas sharing the file do not interleave
                finally:
                    os.close(fd)
        except OSError as exc:
            log.error("AUDIT COPY FAILED: entry %s is in the database but not in %s: %s", row["id"], self.log_path, exc)

    # ---- reading ---------------------------------------------------------------------------------

    def query(self, *, actor: str | None = None, action: str | None = None, target: str | None = None,
              since: float | None = None, until: float | None = None, outcome: str | None = None,
              limit: int = 50, offset: int = 0) -> tuple[list[AuditEntry], int]:
        """Entries matching every filter given, newest first, and how many match in all. `action`
        ending in `*` matches a prefix ("session.*")."""
        conditions = []
        if actor:
            conditions.append(AuditEntry.actor == actor)
        if action:
            if action.endswith("*"):
                prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                conditions.append(AuditEntry.action.like(prefix + "%", escape="\\"))
            else:
                conditions.append(AuditEntry.action == action)
        if target:
            conditions.append(AuditEntry.target == target)
        if since is not None:
            conditions.append(AuditEntry.time >= since)
        if until is not None:
            conditions.append(AuditEntry.time < until)
        if outcome:
            conditions.append(AuditEntry.outcome == outcome)
        with Session(self.engine) as db:
            total = db.scalar(select(func.count()).select_from(AuditEntry).where(*conditions)) or 0
            rows = list(db.scalars(select(AuditEntry).where(*conditions).order_by(AuditEntry.id.desc())
                                   .limit(limit).offset(offset)))
        return rows, total

    # ---- checking --------------------------------------------------------------------------------

    def verify(self, check_copy: bool = True) -> VerifyReport:
        """Walk the chain from the first entry: each id follows the one before, links to its hash, and
        still matches its own hash. Then compare with the JSON-lines copy, when there is one."""
        report = VerifyReport()
        prev, expected = GENESIS, 1
        for row in self._rows():
            report.entries += 1
            where = f"entry {row['id']} ({row['action']} by {row['actor']})"
            if row["id"] != expected:
                missing = f"{expected}" if row["id"] == expected + 1 else f"{expected}..{row['id'] - 1}"
                plural = "y" if row["id"] == expected + 1 else "ies"
                report.bad(expected, f"entr{plural} {missing} {'is' if plural == 'y' else 'are'} missing "
                                     f"(deleted) before {where}")
            elif row["prev_hash"] != prev:
                report.bad(row["id"], f"{where} does not link to entry {expected - 1} (prev_hash differs): one "
                                      "of them was changed or replaced")
            elif entry_digest(row, row["prev_hash"]) != row["entry_hash"]:
                report.bad(row["id"], f"{where} was changed: its fields no longer match its hash")
            prev, expected = row["entry_hash"], row["id"] + 1
        report.head = prev
        if check_copy and self.log_path is not None and self.log_path.exists():
            self._compare_copy(report, self.log_path, last_id=expected - 1)
        return report

    def _rows(self) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=2000).execute(select(_TABLE).order_by(_TABLE.c.id))
            for row in result.mappings():
                yield dict(row)

    def _compare_copy(self, report: VerifyReport, log_path: Path, last_id: int) -> None:
        """Every line of audit.log (`log_path`) must still be in the database, unchanged."""
        past_end: list[int] = []
        for chunk in _copy_chunks(log_path):
            with self.engine.connect() as conn:
                stored = dict(conn.execute(select(_TABLE.c.id, _TABLE.c.entry_hash)
                                           .where(_TABLE.c.id.in_(list(chunk)))).all())
            for entry_id, digest in sorted(chunk.items()):
                if entry_id in stored:
                    if stored[entry_id] != digest:
                        report.bad(entry_id, f"entry {entry_id} differs from its copy in {log_path.name}: "
                                             "it was rewritten in the database")
                elif entry_id > last_id:
                    past_end.append(entry_id)
                # an id below the end that the database lacks was already reported as missing
        if past_end:
            span = f"{past_end[0]}" if len(past_end) == 1 else f"{past_end[0]}..{past_end[-1]}"
            report.bad(past_end[0], f"entr{'y' if len(past_end) == 1 else 'ies'} {span} of {log_path.name} "
                                    f"{'is' if len(past_end) == 1 else 'are'} missing from the database (the newest "
                                    "entries were deleted)")


def _copy_chunks(path: Path, size: int = 5000) -> Iterator[dict[int, str]]:
    chunk: dict[int, str] = {}
    with path.open("rb") as fh:
        for raw in fh:
            try:
                line = json.loads(raw)
                chunk[int(line["id"])] = str(line["entry_hash"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line (crash mid-write) is not evidence of anything
            if len(chunk) >= size:
                yield chunk
                chunk = {}
    if chunk:
        yield chunk


def as_dict(row: AuditEntry | dict[str, Any]) -> dict[str, Any]:
    """An entry as the API and `cotrain audit --json` show it."""
    get = _reader(row)
    return {
        "id": get("id"), "time": datetime.fromtimestamp(get("time"), UTC).isoformat(), "actor": get("actor"),
        "role": get("role"), "action": get("action"), "target": get("target"), "outcome": get("outcome"),
        "clientIp": get("client_ip"), "requestId": get("request_id"), "detail": get("detail") or {},
        "prevHash": get("prev_hash"), "entryHash": get("entry_hash"),
    }


_by_engine: dict[int, AuditLog] = {}


def audit_log_for(source: Engine | sessionmaker[Session], log_path: Path | None = None) -> AuditLog:
    """The process's AuditLog of one database (so the middleware, the UI and payouts share it)."""
    engine = source if isinstance(source, Engine) else source.kw["bind"]
    with _locks_guard:
        found = _by_engine.get(id(engine))
        if found is None or found.engine is not engine:
            found = _by_engine[id(engine)] = AuditLog(engine, log_path)
        return found
