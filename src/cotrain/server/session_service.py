"""Training sessions as plain Python calls (the REST API and the UI both use these):
create/find/get/update/delete, start/cancel/retry/priority, a session as its reader may see it
(`shown`, `status`), and what a session has produced (messages, log tail, checkpoints,
participants). Its metric series are `metrics_service.MetricsService`'s, its model versions
`model_service.ModelService`'s."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.config.memory import need_of
from cotrain.server.auth import Actor
from cotrain.server.capacity import need_of_row, require_capacity
from cotrain.server.config_generator import (
    SessionConfigError,
    build_config,
    with_server_tracking,
    write_config,
)
from cotrain.server.data_paths import check_data_path
from cotrain.server.engine_config import (  # issue 17: sessions from a full engine config
    engine_session,
    engine_words,
    in_engine_terms,
    is_engine_session,
    stored_request,
)
from cotrain.server.errors import Conflict, Forbidden, NotFound, ServiceError
from cotrain.server.internals import scrub, scrub_data, worker_host
from cotrain.server.log_tail import kept_tail, read_tail
from cotrain.server.messages import messages_after, shown_to, status_message
from cotrain.server.orm import ACTIVE_STATES, SessionStatus, TrainingSession
from cotrain.server.permissions import (
    can_manage_session,
    can_read_session,
    can_see_internals,
    readable_sessions_clause,
)
from cotrain.server.queue import queue_position
from cotrain.server.schemas import SessionCreate, SessionFromConfig, SessionOut, SessionStatusOut, SessionUpdate
from cotrain.server.session_policy import Change, SessionPolicy
from cotrain.server.settings import Settings
from cotrain.server.waiting import waiting_reasons

if TYPE_CHECKING:
    from cotrain.config import CotrainConfig

CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")
NOT_FOUND = "No session {!r}. List sessions with GET /api/v1/sessions."
Publish = Callable[[list[dict[str, Any]]], None]  # stores nothing: sends stored messages to the fan-out
DhtPeers = Callable[[str], "list[dict[str, Any]] | None"]  # a session's peer records, None when unreadable


class RewardPools(Protocol):
    """What sessions need of the chain: whether reward pools can be had, and recording one."""

    def require(self) -> None: ...

    def session_created(self, session_id: str, amount: int, asset: str) -> None: ...


@dataclass
class SessionFilter:
    status: str | None = None
    strategy: str | None = None
    model_type: str | None = None
    owner_id: int | None = None
    search: str | None = None

    def where(self, query: Select[TrainingSession]) -> Select[TrainingSession]:
        """`query` narrowed to the sessions this filter lets through."""
        if self.status:
            query = query.where(TrainingSession.status == self.status)
        if self.strategy:
            query = query.where(TrainingSession.strategy == self.strategy)
        if self.model_type:
            query = query.where(TrainingSession.model_type == self.model_type)
        if self.owner_id is not None:
            query = query.where(TrainingSession.owner_id == self.owner_id)
        if self.search:
            query = query.where(TrainingSession.name.ilike(f"%{self.search}%"))
        return query


class SessionService:
    """Built by the composition root (platform.py) with exactly what it uses: the units of work,
    the settings, a way to publish stored messages and to wake the executor, the chain's reward
    pools and the DHT's peer records."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, *, publish: Publish,
                 wake_executor: Callable[[], None], rewards: RewardPools, dht_peers: DhtPeers):
        self.factory = factory
        self.settings = settings
        self.publish = publish
        self.wake_executor = wake_executor
        self.rewards = rewards
        self.dht_peers = dht_peers
        self.policy = SessionPolicy(settings.quotas, settings.layout.root,  # quotas, priority, pools, slurmConfig
                                    settings.slurm if settings.executor == "slurm" else None)

    # ---- reading ---------------------------------------------------------------------------
    def find(self, actor: Actor | None, flt: SessionFilter, limit: int = 50,
             offset: int = 0) -> tuple[list[TrainingSession], int]:
        query = flt.where(select(TrainingSession))
        visible = readable_sessions_clause(actor, TrainingSession.owner_id, TrainingSession.public)
        if visible is not None:
            query = query.where(visible)
        with self.factory.begin() as db:
            total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = db.scalars(query.order_by(TrainingSession.created_at.desc()).limit(limit).offset(offset)).all()
        return list(rows), total

    def count(self, actor: Actor | None, flt: SessionFilter) -> int:
        """How many sessions `actor` may read match `flt`."""
        return self.find(actor, flt, limit=1)[1]

    def get(self, session_id: str, actor: Actor | None = None) -> TrainingSession:
        with self.factory.begin() as db:
            row = db.get(TrainingSession, session_id)
            if row is None or not can_read_session(actor, row.owner_id, row.public):
                raise NotFound(NOT_FOUND.format(session_id))
            return row

    def is_empty(self) -> bool:
        with self.factory.begin() as db:
            return not db.scalar(select(func.count()).select_from(TrainingSession))

    def queue_position(self, session_id: str, actor: Actor | None = None) -> int | None:
        """1 for the next session to run; None when it is not queued."""
        row = self.get(session_id, actor)
        with self.factory.begin() as db:
            return queue_position(db, row)

    def waiting_reasons(self, rows: list[TrainingSession]) -> dict[str, str]:
        """Why each queued session among `rows` has not started (see waiting.py)."""
        if not any(row.status == SessionStatus.QUEUED or row.job_reason for row in rows):
            return {}
        with self.factory.begin() as db:
            return waiting_reasons(db, rows, self.settings.heartbeat_timeout_s)

    def shown(self, row: TrainingSession, actor: Actor | None,
              reasons: dict[str, str] | None = None) -> SessionOut:
        """The session as `actor` may see it (internals.py: paths, hosts and tracebacks for the owner
        and admins only); `reasons` (from `waiting_reasons`) when the caller has them for many rows."""
        if reasons is None:
            reasons = self.waiting_reasons([row])
        internals = can_see_internals(actor, row.owner_id)
        return SessionOut.model_validate(row).model_copy(update={
            "error": self.error_text(row, actor),
            "worker_id": row.worker_id if internals else None,
            "request": row.request if internals else scrub_data(row.request),
            "waiting_reason": reasons.get(row.id),
        })

    def status(self, session_id: str, actor: Actor | None) -> SessionStatusOut:
        """Status, progress and the latest metrics, with the queue position and why it waits."""
        row = self.get(session_id, actor)
        with self.factory.begin() as db:
            position = queue_position(db, row)
        return SessionStatusOut.model_validate(row).model_copy(update={
            "error": self.error_text(row, actor), "queue_position": position,
            "waiting_reason": self.waiting_reasons([row]).get(row.id),
        })

    def shown_data(self, row: TrainingSession, actor: Actor | None, data: dict[str, Any]) -> dict[str, Any]:
        """Stored samples of `row` as `actor` may see them: node ids and GPU names carry no host names
        by the engine's contract; anything that does is still scrubbed for everyone but the owner and
        admins (internals.py)."""
        return data if can_see_internals(actor, row.owner_id) else scrub_data(data, worker_host(row.worker_id))

    def config_toml(self, session_id: str, actor: Actor | None = None) -> str:
        row = self.get(session_id, actor)
        return row.config_toml if can_see_internals(actor, row.owner_id) else scrub(row.config_toml) or ""

    def error_text(self, row: TrainingSession, actor: Actor | None) -> str | None:
        """The run's error as `actor` may see it (no paths, hosts or tracebacks for other people)."""
        if can_see_internals(actor, row.owner_id):
            return row.error
        return scrub(row.error, worker_host(row.worker_id))

    # ---- creating and changing -------------------------------------------------------------
    def create(self, body: SessionCreate, actor: Actor | None) -> TrainingSession:
        """Validate the parameters as a config (SessionConfigError names the field), write the
        TOML under configs/generated/, store the session, queue it unless it is a draft."""
        if body.reward_pool is not None:
            self.rewards.require()
        session_id = uuid.uuid4().hex[:12]
        return self._store_new(session_id, body, build_config(session_id, body), actor)

    # issue 17: a session from a full engine config (engine_config.py)
    def create_from_config(self, body: SessionFromConfig, actor: Actor | None) -> TrainingSession:
        """The same as `create` for the TOML `cotrain train` runs: the config is validated by the
        engine's schema plus engine_config.py's rules, then goes through the very checks of `create`
        (capacity, data roots, quotas, priority, reward pool) as the JSON create it amounts to. The
        row keeps that request plus the submitted text; config_toml is the config with the server's id."""
        if body.reward_pool is not None:
            self.rewards.require()
        session_id = uuid.uuid4().hex[:12]
        config, request = engine_session(session_id, body, actor, self.settings)
        try:
            return self._store_new(session_id, request, config, actor, stored_request(request, body.engine_config))
        except SessionConfigError as exc:
            raise SessionConfigError(in_engine_terms(exc.errors)) from None
        except ServiceError as exc:
            raise type(exc)(engine_words(str(exc))) from None

    def create_example(self) -> TrainingSession | None:
        """The example session (examples.py) when the database has no session yet."""
        from cotrain.server.examples import EXAMPLE_SESSION

        if not self.is_empty():
            return None
        return self.create(SessionCreate.model_validate(EXAMPLE_SESSION), None)

    def _checked_config(self, config: CotrainConfig) -> CotrainConfig:
        """The config with the server's tracking (COTRAIN_TRACKING_* where it sets none, issue 17),
        once a live worker can ever run it (capacity.py: 422 otherwise)."""
        config = with_server_tracking(config, self.settings.tracking)
        require_capacity(self.factory, need_of(config), self.settings.heartbeat_timeout_s)
        return config

    def _store_new(self, session_id: str, body: SessionCreate, config: CotrainConfig, actor: Actor | None,
                   request: dict[str, Any] | None = None) -> TrainingSession:
        config = self._checked_config(config)
        approval = check_data_path(body, actor, self.settings)  # data roots: 422 for a member outside them
        with self.factory.begin() as db:
            self.policy.enforce(db, actor, Change.create(actor, body, config))  # session_policy.py: 403 past a quota
            path = write_config(config, self.settings.layout.generated_configs)
            row = self._new_row(session_id, body, config, path, actor)
            row.request = request or body.model_dump(mode="json", by_alias=True, exclude_none=True)
            row.data_path_approval = approval
            db.add(row)
            db.flush()
            message = status_message(db, row)
        if body.reward_pool is not None:
            self._set_reward_pool(session_id, body.reward_pool.amount, body.reward_pool.asset)
        self.publish([message])
        self.wake_executor()
        return row

    def _new_row(self, session_id: str, body: SessionCreate, config: CotrainConfig, path: Path,
                 actor: Actor | None) -> TrainingSession:
        """The row of a new session: queued, or a draft with `autoStart: false`; nothing run yet."""
        status = SessionStatus.QUEUED if body.auto_start else SessionStatus.DRAFT
        row = TrainingSession(
            id=session_id, owner_id=actor.token_id if actor else None, status=status,
            queued_at=time.time() if status == SessionStatus.QUEUED else None,
            max_retries=self.settings.max_retries if body.max_retries is None else body.max_retries,
            latest_metrics={}, attempts=0, next_attempt_at=0.0, step=0, progress=0.0, participants=0,
            engine_seq=0, message_seq=0, cancel_requested=False,
        )
        _describe(row, body, config, path)
        return row

    def _set_reward_pool(self, session_id: str, amount: int, asset: str) -> None:
        """The chain's hook, in its own transaction; a session whose pool cannot be recorded is removed again."""
        try:
            self.rewards.session_created(session_id, amount, asset)
        except Exception:
            with self.factory.begin() as db:
                row = db.get(TrainingSession, session_id)
                if row is not None:
                    db.delete(row)
            self._config_file(session_id).unlink(missing_ok=True)
            raise

    def _config_file(self, session_id: str) -> Path:
        return Path(self.settings.layout.generated_configs / f"{session_id}.toml")

    def update(self, session_id: str, changes: SessionUpdate, actor: Actor | None) -> TrainingSession:
        with self.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status not in (SessionStatus.DRAFT, SessionStatus.QUEUED):
                raise Conflict(f"Session {session_id} is {row.status}; only draft or queued sessions can be "
                               "edited. Cancel it first.")
            patch = changes.model_dump(by_alias=True, exclude_unset=True, mode="json")
            if is_engine_session(row.request):  # issue 17: its config is the submitted TOML, not these fields
                message = self._update_engine_session(db, row, patch, actor)
            else:
                message = self._update_fields(db, row, _merged_body(row.request, patch), actor)
        self.publish([message])
        return row

    def _update_fields(self, db: Session, row: TrainingSession, body: SessionCreate,
                       actor: Actor | None) -> dict[str, Any]:
        """A waiting session edited field by field: its config is built again and held to the
        rules of a create (capacity, data roots, quotas)."""
        config = self._checked_config(build_config(row.id, body))
        row.data_path_approval = check_data_path(body, actor, self.settings, row.data_path_approval)
        self.policy.enforce(db, actor, Change.update(row, body, config))  # session_policy.py
        path = write_config(config, self.settings.layout.generated_configs)
        row.request = body.model_dump(mode="json", by_alias=True, exclude_none=True)
        _describe(row, body, config, path)
        return status_message(db, row, updated=True)

    def _update_engine_session(self, db: Session, row: TrainingSession, patch: dict[str, Any],
                               actor: Actor | None) -> dict[str, Any]:
        """An edit of a session made from an engine config: its name, description, visibility and
        priority; its config is the TOML that was sent (send a new one to change it)."""
        fixed = sorted(set(patch) - {"name", "description", "public", "priority"})
        if fixed:
            raise Conflict(f"Session {row.id} was created from an engine config, so {', '.join(fixed)} cannot be "
                           "edited field by field: delete it and create it again from the changed TOML.")
        if "priority" in patch:
            self.policy.enforce(db, actor, Change.set_priority(row, patch["priority"]))  # session_policy.py
        for key, value in patch.items():
            if value is not None:
                setattr(row, key, value)
        row.request = {**row.request, **{k: v for k, v in patch.items() if v is not None}}
        return status_message(db, row, updated=True)

    def delete(self, session_id: str, actor: Actor | None) -> None:
        with self.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status in ACTIVE_STATES:
                raise Conflict(f"Session {session_id} is {row.status}. Cancel it, wait until it stops, "
                               "then delete it.")
            db.delete(row)
        self._config_file(session_id).unlink(missing_ok=True)

    def start(self, session_id: str, actor: Actor | None) -> TrainingSession:
        """Queue a draft, or run a finished session again (it resumes from its checkpoints)."""
        return self._requeue(session_id, actor, (SessionStatus.DRAFT, *FINISHED), "started")

    def retry(self, session_id: str, actor: Actor | None) -> TrainingSession:
        """Queue a failed or cancelled session again with a fresh retry budget."""
        return self._requeue(session_id, actor, (SessionStatus.FAILED, SessionStatus.CANCELLED), "retried")

    def _requeue(self, session_id: str, actor: Actor | None, allowed: tuple[str, ...],
                 verb: str) -> TrainingSession:
        with self.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status not in allowed:
                raise Conflict(f"Session {session_id} is {row.status}; it can be {verb} only when "
                               f"{' or '.join(allowed)}.")
            require_capacity(self.factory, need_of_row(row), self.settings.heartbeat_timeout_s)  # capacity.py
            self.policy.enforce(db, actor, Change.start(row))  # session_policy.py: active-sessions quota
            row.status, row.attempts, row.next_attempt_at, row.error = SessionStatus.QUEUED, 0, 0.0, None
            row.cancel_requested, row.finished_at, row.queued_at = False, None, time.time()
            message = status_message(db, row)
        self.publish([message])
        self.wake_executor()
        return row

    def cancel(self, session_id: str, actor: Actor | None) -> TrainingSession:
        """Queued/draft: cancelled at once. Running: the worker sends SIGTERM (the engine saves a
        checkpoint), then SIGKILL after the grace period."""
        with self.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status in (SessionStatus.DRAFT, SessionStatus.QUEUED):
                row.status, row.finished_at = SessionStatus.CANCELLED, time.time()
            elif row.status in ACTIVE_STATES:
                row.status, row.cancel_requested = SessionStatus.CANCELLING, True
            else:
                raise Conflict(f"Session {session_id} is already {row.status}; nothing to cancel.")
            message = status_message(db, row)
        self.publish([message])
        self.wake_executor()
        return row

    def set_priority(self, session_id: str, priority: int, actor: Actor | None) -> TrainingSession:
        with self.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            self.policy.enforce(db, actor, Change.set_priority(row, priority))  # session_policy.py
            row.priority = priority
            row.request = {**row.request, "priority": priority}  # so a later edit keeps it
        self.wake_executor()
        return row

    def _managed(self, db: Session, session_id: str, actor: Actor | None) -> TrainingSession:
        row = db.get(TrainingSession, session_id, with_for_update=True)
        if row is None or not can_read_session(actor, row.owner_id, row.public):
            raise NotFound(NOT_FOUND.format(session_id))
        if not can_manage_session(actor, row.owner_id):
            raise Forbidden(f"Session {session_id} belongs to another user; only its owner or an admin can "
                            "change it.")
        return row

    # ---- what a session produced -----------------------------------------------------------
    def messages(self, session_id: str, after: int = 0, limit: int = 1000,
                 actor: Actor | None = None) -> list[dict[str, Any]]:
        row = self.get(session_id, actor)
        with self.factory.begin() as db:
            return shown_to(actor, row.owner_id, messages_after(db, session_id, after, limit))

    def log_tail(self, session_id: str, stream: str = "stderr", lines: int = 200,
                 actor: Actor | None = None) -> list[str]:
        return self.log_view(session_id, stream, lines, actor)["lines"]

    def log_view(self, session_id: str, stream: str = "stderr", lines: int = 200,
                 actor: Actor | None = None) -> dict[str, Any]:
        """The last `lines` lines of the run's `stream`: from this machine's disk, or from the tail
        the worker that ran it keeps in the database (at most log_tail.KEPT_LINES) when the run was
        on another machine, or that tail is newer than the file here."""
        row = self.get(session_id, actor)
        view = self._log_view(session_id, stream, lines)
        if can_see_internals(actor, row.owner_id):
            return view
        hosts = worker_host(view["workerId"]) + worker_host(self.settings.worker_id)
        return {"lines": [scrub(line, hosts) for line in view["lines"]], "source": view["source"], "workerId": None}

    def _log_view(self, session_id: str, stream: str, lines: int) -> dict[str, Any]:
        path = self.settings.layout.session_logs(session_id) / f"{stream}.log"
        local = read_tail(path, lines)
        with self.factory.begin() as db:
            kept = kept_tail(db, session_id, stream)
            remote = kept is not None and kept.worker_id != self.settings.worker_id
            kept_lines, kept_worker, kept_at = ((kept.lines, kept.worker_id, kept.updated_at) if kept
                                                else ([], None, 0.0))
        here = {"lines": local, "source": "disk", "workerId": self.settings.worker_id}
        there = {"lines": kept_lines[-lines:], "source": "database", "workerId": kept_worker}
        if local is None:
            return there if kept else {"lines": [], "source": None, "workerId": None}
        if remote and kept_at > _mtime(path):
            return there
        return here

    def checkpoints(self, session_id: str, actor: Actor | None = None) -> list[dict[str, Any]]:
        """Checkpoints on this machine's disk; their paths for the owner and admins only."""
        show_paths = can_see_internals(actor, self.get(session_id, actor).owner_id)
        root = self.settings.layout.checkpoints / session_id
        found = []
        for path in sorted(root.glob("step-*")) if root.is_dir() else []:
            match = CHECKPOINT_DIR.match(path.name)
            if match and path.is_dir():
                files = [f for f in path.rglob("*") if f.is_file()]
                found.append({
                    "step": int(match.group(1)), "path": str(path) if show_paths else None,
                    "size_bytes": sum(f.stat().st_size for f in files), "created_at": path.stat().st_mtime,
                })
        return found

    def participants(self, session_id: str, actor: Actor | None = None) -> dict[str, Any]:
        """Peers of the session: the DHT records of `cotrain.p2p.records` when available, else what
        the engine reported (its participant count and `peer` events)."""
        row = self.get(session_id, actor)
        peers = self.dht_peers(session_id)
        if peers is None:
            with self.factory.begin() as db:
                seen: dict[str, dict[str, Any]] = {}
                for message in messages_after(db, session_id, 0, 100_000):
                    if message["event"] == "training.peer" and message["data"].get("peer_id"):
                        seen[message["data"]["peer_id"]] = message["data"]
            peers = list(seen.values())
            source = "engine"
        else:
            source = "dht"
        return {"sessionId": session_id, "count": max(row.participants, len(peers)), "source": source,
                "peers": peers}


FINISHED = (SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED)


def _describe(row: TrainingSession, body: SessionCreate, config: CotrainConfig, path: Path) -> None:
    """Copy what the list and the queue read from the request and its config onto the row."""
    row.name, row.description, row.priority, row.public = body.name, body.description, body.priority, body.public
    row.config_path, row.config_toml = str(path), path.read_text()
    row.model_type, row.model_size, row.strategy = config.model.type, config.model.size, config.distributed.strategy
    row.total_steps = config.train.max_steps


def _merged_body(request: dict[str, Any], patch: dict[str, Any]) -> SessionCreate:
    """The stored request with an edit's fields laid over it (one level deep), validated again;
    SessionConfigError names the field, like a create's 422."""
    merged = {**request}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    try:
        return SessionCreate.model_validate(merged)
    except ValidationError as exc:
        raise SessionConfigError([{"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                                  for e in exc.errors(include_url=False)]) from None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
