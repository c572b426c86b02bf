"""The server's tables. Times are unix seconds (floats) so SQLite and PostgreSQL compare them
the same way; the API turns them into ISO datetimes."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from cotrain.db import Base


# Session lifecycle. `draft` waits for `start`; `queued` waits for a worker; `starting`/`running`
# belong to one worker; `cancelling` asks that worker to stop the run.
class SessionStatus(StrEnum):
    DRAFT = "draft"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = (SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.CANCELLING)
FINAL_STATES = (SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED)
ALL_STATES = tuple(SessionStatus)


def now() -> float:
    return time.time()


class TrainingSession(Base):
    __tablename__ = "training_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"), nullable=True)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default=SessionStatus.QUEUED, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # the create body, camelCase, as sent
    config_path: Mapped[str] = mapped_column(Text)
    config_toml: Mapped[str] = mapped_column(Text)  # so a worker on another machine can write its own copy
    model_type: Mapped[str] = mapped_column(String(16))
    model_size: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)
    queued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # queue and executor bookkeeping
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=2)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpu_ids: Mapped[str | None] = mapped_column(String(100), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # a maintainer's or admin's approval of a dataPath outside the data roots (server/data_paths.py);
    # the worker adds exactly its resolved path to the run's roots
    data_path_approval: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # issue 12: the peer id of the server's own engine peer, which validates a rewarded DiLoCo session
    # (server/validator_peer.py); volunteers learn from GET /sessions/{id}/join whose exclusions to follow
    validator_peer_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # issue 15: the Slurm job of the run (a Slurm worker re-attaches to it by this id), and why it is pending
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # latest progress, for lists and the status endpoint
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    participants: Mapped[int] = mapped_column(Integer, default=0)
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    engine_seq: Mapped[int] = mapped_column(Integer, default=0)  # last engine event consumed
    message_seq: Mapped[int] = mapped_column(Integer, default=0)  # last WebSocket message sequence number

    __table_args__ = (Index("ix_training_sessions_queue", "status", "priority", "created_at"),)


class SessionMessage(Base):
    """Every WebSocket message pushed for a session, kept for replay (`after: SEQ`) and the events endpoint."""

    __tablename__ = "session_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(40))
    time: Mapped[float] = mapped_column(Float, default=now)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_session_messages_seq"),
        Index("ix_session_messages_time", "time"),  # the "*" replay of sessions a client never heard of
    )


class MetricPoint(Base):
    """One `progress` or `eval` event of the engine, flattened for charts."""

    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    learning_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    participants: Mapped[int | None] = mapped_column(Integer, nullable=True)  # peers at this step (progress only)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_perplexity: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_metric_points_session_step", "session_id", "step"),)


class ModelVersion(Base):
    """A final model exported by a completed run: v1, v2, ... per session."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)  # whose disk `path` is on

    __table_args__ = (UniqueConstraint("session_id", "version", name="uq_model_versions_version"),)


class ApiToken(Base):
    """An actor: a bearer token for programmatic clients (only its SHA-256 is stored), or a signed-in
    wallet (`name` "wallet:0x...", `token_hash` from `auth.principal_hash`). Its `role` is one of
    `permissions.Role`. A wallet's tokens issued before `tokens_valid_after` are revoked."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    tokens_valid_after: Mapped[float | None] = mapped_column(Float, nullable=True)


class RevokedToken(Base):
    """A wallet token revoked before it expired (sign-out): its id until its own expiry."""

    __tablename__ = "revoked_tokens"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    revoked_at: Mapped[float] = mapped_column(Float, default=now)



class Worker(Base):
    """An executor (`cotrain up`'s embedded one or a `cotrain worker`) and what it can run, kept
    fresh by its heartbeat, so the API can say why a queued session waits."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # Settings.worker_id: host:COTRAIN_HOME
    gpus: Mapped[int] = mapped_column(Integer, default=0)  # 0: trains on CPU (runs any session, slowly)
    cpu_slots: Mapped[int] = mapped_column(Integer, default=1)
    # memory one training process may use there: each GPU's memory, or host RAM on a CPU worker
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    runs: Mapped[int] = mapped_column(Integer, default=0)  # sessions it runs now
    started_at: Mapped[float] = mapped_column(Float, default=now)
    heartbeat_at: Mapped[float] = mapped_column(Float, default=now)



class SessionLogTail(Base):
    """The last lines of a run's stdout or stderr, kept by the worker that follows it, so an API
    replica on another machine (without the worker's disk) can show them."""

    __tablename__ = "session_log_tails"

    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"), primary_key=True)
    stream: Mapped[str] = mapped_column(String(8), primary_key=True)  # stdout | stderr
    worker_id: Mapped[str] = mapped_column(String(200))
    lines: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class AuditEntry(Base):
    """One state-changing request or security event, append-only and hash-chained: `entry_hash` is
    the ledger's kind of link (cotrain.hashchain) over this entry's fields and the previous entry's
    hash, and ids are consecutive (see audit.py), so an edited or deleted row breaks the chain."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, default=now, index=True)
    actor: Mapped[str] = mapped_column(String(100), index=True)  # "token:3", "wallet:0x...", "anonymous"
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(60), index=True)
    target: Mapped[str] = mapped_column(String(200), default="", index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused | failed
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)


# ---- issue 19: per-node system metrics and DiLoCo rounds, kept for charts (server/node_samples.py) ----

class NodeSample(Base):
    """One node's (DDP/FSDP host, DiLoCo peer) `system` sample from a `progress` event. Rates are
    bytes/s over the engine's log interval; GPU columns are NULL on a node without a GPU (`gpus`
    holds the per-device list, the `gpu_*` columns their node-level mean/sum/max for charts).
    Rows per node are thinned as they grow (node_samples.MAX_SAMPLES_PER_NODE)."""

    __tablename__ = "node_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(64))
    time: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(Integer)
    host_cpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cpu_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    ram_used_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ram_total_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    process_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    net_sent_bytes_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_recv_bytes_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_read_bytes_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_write_bytes_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpu_util_percent: Mapped[float | None] = mapped_column(Float, nullable=True)  # mean over the node's GPUs
    gpu_mem_used_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # sum
    gpu_mem_total_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # sum
    gpu_power_w: Mapped[float | None] = mapped_column(Float, nullable=True)  # sum
    gpu_temp_c: Mapped[float | None] = mapped_column(Float, nullable=True)  # hottest
    gpus: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_node_samples_session_node_step", "session_id", "node", "step"),)


class RoundSample(Base):
    """One DiLoCo outer round as a peer reported it (`round` block of a `progress` event); a later
    report of the same round replaces it."""

    __tablename__ = "round_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(Integer)
    round_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    averaging_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    wait_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_sent: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes_received: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    group_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slowest_peer: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (UniqueConstraint("session_id", "round", name="uq_round_samples_round"),)


class RoundPeerSample(Base):
    """One peer's part of one round (its training time and traffic); the reports of several peers
    about the same round merge here, one row per (round, peer)."""

    __tablename__ = "round_peer_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("training_sessions.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    peer: Mapped[str] = mapped_column(String(64))
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_sent: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes_received: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (UniqueConstraint("session_id", "round", "peer", name="uq_round_peer_samples_peer"),)
