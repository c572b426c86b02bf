"""Training sessions as plain Python calls (the REST API and the UI both use these):
create/list/get/update/delete, start/cancel/retry/priority, and what a session has produced
(metric history, messages, log tail, checkpoints, participants)."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import func, select

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
from cotrain.server.internals import scrub, worker_host
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
from cotrain.server.schemas import SessionCreate, SessionFromConfig, SessionUpdate
from cotrain.server.session_policy import Change, SessionPolicy
from cotrain.server.waiting import waiting_reasons

if TYPE_CHECKING:
    from cotrain.config import CotrainConfig
    from cotrain.server.platform import Platform

CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class SessionFilter:
    status: str | None = None
    strategy: str | None = None
    model_type: str | None = None
    owner_id: int | None = None
    search: str | None = None


class SessionService:
    def __init__(self, platform: Platform):
        self.p = platform
        self.policy = SessionPolicy(platform.settings.quotas, platform.settings.layout.root)  # quotas, priority, pools

    # ---- reading ---------------------------------------------------------------------------
    def list(self, actor: Actor | None, flt: SessionFilter, limit: int = 50, offset: int = 0) -> tuple[list[TrainingSession], int]:
        query = select(TrainingSession)
        visible = readable_sessions_clause(actor, TrainingSession.owner_id, TrainingSession.public)
        if visible is not None:
            query = query.where(visible)
        if flt.status:
            query = query.where(TrainingSession.status == flt.status)
        if flt.strategy:
            query = query.where(TrainingSession.strategy == flt.strategy)
        if flt.model_type:
            query = query.where(TrainingSession.model_type == flt.model_type)
        if flt.owner_id is not None:
            query = query.where(TrainingSession.owner_id == flt.owner_id)
        if flt.search:
            query = query.where(TrainingSession.name.ilike(f"%{flt.search}%"))
        with self.p.factory.begin() as db:
            total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = db.scalars(query.order_by(TrainingSession.created_at.desc()).limit(limit).offset(offset)).all()
        return list(rows), total

    def get(self, session_id: str, actor: Actor | None = None) -> TrainingSession:
        with self.p.factory.begin() as db:
            row = db.get(TrainingSession, session_id)
            if row is None or not can_read_session(actor, row.owner_id, row.public):
                raise NotFound(f"No session {session_id!r}. List sessions with GET /api/v1/sessions.")
            return row

    def queue_position(self, session_id: str, actor: Actor | None = None) -> int | None:
        """1 for the next session to run; None when it is not queued."""
        row = self.get(session_id, actor)
        with self.p.factory.begin() as db:
            return queue_position(db, row)

    def waiting_reasons(self, rows: list[TrainingSession]) -> dict[str, str]:
        """Why each queued session among `rows` has not started (see waiting.py)."""
        if not any(row.status == SessionStatus.QUEUED for row in rows):
            return {}
        with self.p.factory.begin() as db:
            return waiting_reasons(db, rows, self.p.settings.heartbeat_timeout_s)

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
            self.p.chain.require()
        session_id = uuid.uuid4().hex[:12]
        return self._store_new(session_id, body, build_config(session_id, body), actor)

    # issue 17: a session from a full engine config (engine_config.py)
    def create_from_config(self, body: SessionFromConfig, actor: Actor | None) -> TrainingSession:
        """The same as `create` for the TOML `cotrain train` runs: the config is validated by the
        engine's schema plus engine_config.py's rules, then goes through the very checks of `create`
        (capacity, data roots, quotas, priority, reward pool) as the JSON create it amounts to. The
        row keeps that request plus the submitted text; config_toml is the config with the server's id."""
        if body.reward_pool is not None:
            self.p.chain.require()
        session_id = uuid.uuid4().hex[:12]
        config, request = engine_session(session_id, body, actor, self.p.settings)
        try:
            return self._store_new(session_id, request, config, actor, stored_request(request, body.engine_config))
        except SessionConfigError as exc:
            raise SessionConfigError(in_engine_terms(exc.errors)) from None
        except ServiceError as exc:
            raise type(exc)(engine_words(str(exc))) from None

    def _store_new(self, session_id: str, body: SessionCreate, config: CotrainConfig, actor: Actor | None,
                   request: dict[str, Any] | None = None) -> TrainingSession:
        config = with_server_tracking(config, self.p.settings.tracking)  # issue 17: COTRAIN_TRACKING_* where the config sets none
        require_capacity(self.p.factory, need_of(config), self.p.settings.heartbeat_timeout_s)  # capacity.py: 422 when no live worker can ever run it
        approval = check_data_path(body, actor, self.p.settings)  # data roots: 422 for a member outside them
        status = SessionStatus.QUEUED if body.auto_start else SessionStatus.DRAFT
        with self.p.factory.begin() as db:
            self.policy.enforce(db, actor, Change.create(actor, body, config))  # session_policy.py: 403 past a quota
            path = write_config(config, self.p.settings.layout.generated_configs)
            row = TrainingSession(
                id=session_id, name=body.name, description=body.description,
                owner_id=actor.token_id if actor else None, public=body.public, status=status,
                priority=body.priority,
                request=request or body.model_dump(mode="json", by_alias=True, exclude_none=True),
                config_path=str(path), config_toml=path.read_text(), model_type=config.model.type,
                model_size=config.model.size, strategy=config.distributed.strategy,
                total_steps=config.train.max_steps, queued_at=time.time() if status == SessionStatus.QUEUED else None,
                max_retries=self.p.settings.max_retries if body.max_retries is None else body.max_retries,
                latest_metrics={}, attempts=0, next_attempt_at=0.0, step=0, progress=0.0, participants=0,
                engine_seq=0, message_seq=0, cancel_requested=False, data_path_approval=approval,
            )
            db.add(row)
            db.flush()
            message = status_message(db, row)
        if body.reward_pool is not None:
            self._set_reward_pool(session_id, body.reward_pool.amount, body.reward_pool.asset)
        self.p.publish([message])
        self.p.wake_executor()
        return row

    def _set_reward_pool(self, session_id: str, amount: int, asset: str) -> None:
        """The chain's hook, in its own transaction; a session whose pool cannot be recorded is removed again."""
        try:
            self.p.chain.session_created(session_id, amount, asset)
        except Exception:
            with self.p.factory.begin() as db:
                row = db.get(TrainingSession, session_id)
                if row is not None:
                    db.delete(row)
            Path(self.p.settings.layout.generated_configs / f"{session_id}.toml").unlink(missing_ok=True)
            raise

    def update(self, session_id: str, changes: SessionUpdate, actor: Actor | None) -> TrainingSession:
        with self.p.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status not in (SessionStatus.DRAFT, SessionStatus.QUEUED):
                raise Conflict(f"Session {session_id} is {row.status}; only draft or queued sessions can be edited. Cancel it first.")
            patch = changes.model_dump(by_alias=True, exclude_unset=True, mode="json")
            if is_engine_session(row.request):  # issue 17: its config is the submitted TOML, not these fields
                message = self._update_engine_session(db, row, patch, actor)
                self.p.publish([message])
                return row
            merged = {**row.request}
            for key, value in patch.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            try:
                body = SessionCreate.model_validate(merged)
            except ValidationError as exc:
                raise SessionConfigError(
                    [{"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)]
                ) from None
            config = with_server_tracking(build_config(session_id, body), self.p.settings.tracking)  # issue 17
            require_capacity(self.p.factory, need_of(config), self.p.settings.heartbeat_timeout_s)  # capacity.py
            row.data_path_approval = check_data_path(body, actor, self.p.settings, row.data_path_approval)
            self.policy.enforce(db, actor, Change.update(row, body, config))  # session_policy.py
            path = write_config(config, self.p.settings.layout.generated_configs)
            row.request = body.model_dump(mode="json", by_alias=True, exclude_none=True)
            row.name, row.description, row.priority, row.public = body.name, body.description, body.priority, body.public
            row.config_path, row.config_toml = str(path), path.read_text()
            row.model_type, row.model_size, row.strategy = config.model.type, config.model.size, config.distributed.strategy
            row.total_steps = config.train.max_steps
            message = status_message(db, row, updated=True)
        self.p.publish([message])
        return row

    def _update_engine_session(self, db: Any, row: TrainingSession, patch: dict[str, Any],
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
        with self.p.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status in ACTIVE_STATES:
                raise Conflict(f"Session {session_id} is {row.status}. Cancel it, wait until it stops, then delete it.")
            db.delete(row)
        Path(self.p.settings.layout.generated_configs / f"{session_id}.toml").unlink(missing_ok=True)

    def start(self, session_id: str, actor: Actor | None) -> TrainingSession:
        """Queue a draft, or run a finished session again (it resumes from its checkpoints)."""
        return self._requeue(session_id, actor, (SessionStatus.DRAFT, SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED), "started")

    def retry(self, session_id: str, actor: Actor | None) -> TrainingSession:
        """Queue a failed or cancelled session again with a fresh retry budget."""
        return self._requeue(session_id, actor, (SessionStatus.FAILED, SessionStatus.CANCELLED), "retried")

    def _requeue(self, session_id: str, actor: Actor | None, allowed: tuple[str, ...], verb: str) -> TrainingSession:
        with self.p.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status not in allowed:
                raise Conflict(f"Session {session_id} is {row.status}; it can be {verb} only when {' or '.join(allowed)}.")
            require_capacity(self.p.factory, need_of_row(row), self.p.settings.heartbeat_timeout_s)  # capacity.py
            self.policy.enforce(db, actor, Change.start(row))  # session_policy.py: active-sessions quota
            row.status, row.attempts, row.next_attempt_at, row.error = SessionStatus.QUEUED, 0, 0.0, None
            row.cancel_requested, row.finished_at, row.queued_at = False, None, time.time()
            message = status_message(db, row)
        self.p.publish([message])
        self.p.wake_executor()
        return row

    def cancel(self, session_id: str, actor: Actor | None) -> TrainingSession:
        """Queued/draft: cancelled at once. Running: the worker sends SIGTERM (the engine saves a
        checkpoint), then SIGKILL after the grace period."""
        with self.p.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            if row.status in (SessionStatus.DRAFT, SessionStatus.QUEUED):
                row.status, row.finished_at = SessionStatus.CANCELLED, time.time()
            elif row.status in ACTIVE_STATES:
                row.status, row.cancel_requested = SessionStatus.CANCELLING, True
            else:
                raise Conflict(f"Session {session_id} is already {row.status}; nothing to cancel.")
            message = status_message(db, row)
        self.p.publish([message])
        self.p.wake_executor()
        return row

    def set_priority(self, session_id: str, priority: int, actor: Actor | None) -> TrainingSession:
        with self.p.factory.begin() as db:
            row = self._managed(db, session_id, actor)
            self.policy.enforce(db, actor, Change.set_priority(row, priority))  # session_policy.py
            row.priority = priority
            row.request = {**row.request, "priority": priority}  # so a later edit keeps it
        self.p.wake_executor()
        return row

    def _managed(self, db: Any, session_id: str, actor: Actor | None) -> TrainingSession:
        row = db.get(TrainingSession, session_id, with_for_update=True)
        if row is None or not can_read_session(actor, row.owner_id, row.public):
            raise NotFound(f"No session {session_id!r}. List sessions with GET /api/v1/sessions.")
        if not can_manage_session(actor, row.owner_id):
            raise Forbidden(f"Session {session_id} belongs to another user; only its owner or an admin can change it.")
        return row

    # ---- what a session produced -----------------------------------------------------------
    def messages(self, session_id: str, after: int = 0, limit: int = 1000, actor: Actor | None = None) -> list[dict[str, Any]]:
        row = self.get(session_id, actor)
        with self.p.factory.begin() as db:
            return shown_to(actor, row.owner_id, messages_after(db, session_id, after, limit))

    def log_tail(self, session_id: str, stream: str = "stderr", lines: int = 200, actor: Actor | None = None) -> list[str]:
        return self.log_view(session_id, stream, lines, actor)["lines"]

    def log_view(self, session_id: str, stream: str = "stderr", lines: int = 200, actor: Actor | None = None) -> dict[str, Any]:
        """The last `lines` lines of the run's `stream`: from this machine's disk, or from the tail
        the worker that ran it keeps in the database (at most log_tail.KEPT_LINES) when the run was
        on another machine, or that tail is newer than the file here."""
        row = self.get(session_id, actor)
        view = self._log_view(session_id, stream, lines)
        if can_see_internals(actor, row.owner_id):
            return view
        hosts = worker_host(view["workerId"]) + worker_host(self.p.settings.worker_id)
        return {"lines": [scrub(line, hosts) for line in view["lines"]], "source": view["source"], "workerId": None}

    def _log_view(self, session_id: str, stream: str, lines: int) -> dict[str, Any]:
        path = self.p.settings.layout.session_logs(session_id) / f"{stream}.log"
        local = read_tail(path, lines)
        with self.p.factory.begin() as db:
            kept = kept_tail(db, session_id, stream)
            remote = kept is not None and kept.worker_id != self.p.settings.worker_id
            kept_lines, kept_worker, kept_at = (kept.lines, kept.worker_id, kept.updated_at) if kept else ([], None, 0.0)
        here = {"lines": local, "source": "disk", "workerId": self.p.settings.worker_id}
        there = {"lines": kept_lines[-lines:], "source": "database", "workerId": kept_worker}
        if local is None:
            return there if kept else {"lines": [], "source": None, "workerId": None}
        if remote and kept_at > _mtime(path):
            return there
        return here

    def checkpoints(self, session_id: str, actor: Actor | None = None) -> list[dict[str, Any]]:
        """Checkpoints on this machine's disk; their paths for the owner and admins only."""
        show_paths = can_see_internals(actor, self.get(session_id, actor).owner_id)
        root = self.p.settings.layout.checkpoints / session_id
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
        peers = self.p.dht.session_peers(session_id) if self.p.dht else None
        if peers is None:
            with self.p.factory.begin() as db:
                seen: dict[str, dict[str, Any]] = {}
                for message in messages_after(db, session_id, 0, 100_000):
                    if message["event"] == "training.peer" and message["data"].get("peer_id"):
                        seen[message["data"]["peer_id"]] = message["data"]
            peers = list(seen.values())
            source = "engine"
        else:
            source = "dht"
        return {"sessionId": session_id, "count": max(row.participants, len(peers)), "source": source, "peers": peers}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0




