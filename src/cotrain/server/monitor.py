"""Applies the engine's events (docs/architecture.md, "Event stream") to the database and turns them into messages.

One step per event type (`APPLY`): each updates the session's row (and its metric history) and
returns the data of the message to publish, a model of server/message_data.py, or None.
Idempotent: an event whose `seq` is not above the session's `engine_seq` was already applied,
so re-reading a stream after a restart changes nothing.

A `verdict` event (the session's validator judging one DiLoCo round) goes to the chain in the same transaction:
one ledger entry per round (cotrain.chain.verdicts). Only the session's own engine stream is read here, so its
verdicts are trusted; each is still parsed, and a malformed one is skipped (logged).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from cotrain.chain.evidence import DrawnFrom, VerifyParams, log_malformed, params_from_config
from cotrain.chain.keys import KeyConfigError
from cotrain.chain.verdicts import record_verdicts
from cotrain.core.events import EventType
from cotrain.p2p.progress import BadRecord, skipped_once
from cotrain.p2p.verification import Verdict
from cotrain.server.message_data import (
    CheckpointData,
    ErrorData,
    EvalData,
    MessageData,
    PeerData,
    ProgressData,
    ProgressMetrics,
    StatusData,
)
from cotrain.server.messages import record_message
from cotrain.server.node_samples import clean_round, clean_system, record_event_blocks
from cotrain.server.orm import MetricPoint, SessionStatus, TrainingSession

if TYPE_CHECKING:
    from cotrain.chain.service import ChainService

log = logging.getLogger(__name__)

Event = dict[str, Any]  # one line of events.jsonl
EVAL_FIELDS = tuple(name for name in EvalData.model_fields if name != "step")  # val_loss, val_perplexity, ...
COMMON_FIELDS = ("type", "session_id", "seq", "time")  # every event has them (core/events.py)


def apply_engine_event(db: Session, row: TrainingSession, event: Event,
                       chain: ChainService | None = None) -> list[dict[str, Any]]:
    """Update `row` (and metric history) from one engine event; return the messages to publish. `chain`
    records the verdicts of `verdict` events (None: a worker without the platform's ledger; they are dropped)."""
    seq = int(event.get("seq") or 0)
    if seq <= row.engine_seq:
        return []
    row.engine_seq = seq
    kind = str(event.get("type"))
    data: MessageData | None = None
    if kind == EventType.VERDICT:  # its own step: it needs the chain
        record_round_verdicts(db, row, event, chain)
    elif (apply := APPLY.get(kind)) is not None:
        data = apply(db, row, event)
    return [] if data is None else [record_message(db, row.id, data)]


def progress_data(event: Event, blocks: dict[str, Any] | None = None) -> ProgressData:
    """The `training.progress` data of an engine `progress` event; `blocks`: its `system` and `round`
    blocks as node_samples.record_event_blocks kept them (cleaned here when not given)."""
    metrics = event.get("metrics") or {}
    if blocks is None:
        blocks = {k: v for k, v in (("system", clean_system(event.get("system"))),
                                    ("round", clean_round(event.get("round")))) if v is not None}
    return ProgressData(
        progress=round(float(event.get("progress") or 0.0), 2),
        loss=event.get("loss"),
        participants=event.get("participants", 1),
        metrics=ProgressMetrics(**{name: metrics.get(name) for name in ProgressMetrics.model_fields}),
        step=event.get("step"),
        total_steps=event.get("total_steps"),
        engine_seq=event.get("seq"),
        time=event.get("time"),
        **blocks,
    )


def _mark_running(row: TrainingSession) -> None:
    if row.status == SessionStatus.STARTING:
        row.status = SessionStatus.RUNNING


def _started(db: Session, row: TrainingSession, event: Event) -> StatusData:
    row.total_steps = event.get("total_steps") or row.total_steps
    row.step = event.get("step") or row.step
    _mark_running(row)
    return StatusData(
        status=row.status, attempt=row.attempts, error=None, resumed_from=event.get("resumed_from"), step=row.step,
        total_steps=row.total_steps, num_parameters=event.get("num_parameters"), device=event.get("device"),
    )


def _progress(db: Session, row: TrainingSession, event: Event) -> ProgressData:
    """The row's latest numbers, one metric point, and (issue 19) the per-node and per-round rows."""
    metrics = event.get("metrics") or {}
    row.step = event.get("step") or row.step
    row.total_steps = event.get("total_steps") or row.total_steps
    row.progress = float(event.get("progress") or row.progress)
    row.loss = event.get("loss")
    row.participants = int(event.get("participants") or 1)
    row.latest_metrics = {**(row.latest_metrics or {}), **metrics}
    _mark_running(row)
    db.add(MetricPoint(
        session_id=row.id, step=row.step, time=event.get("time") or 0.0, loss=row.loss,
        accuracy=metrics.get("accuracy"), learning_rate=metrics.get("learning_rate"),
        tokens_per_second=metrics.get("tokens_per_second"), participants=row.participants,
    ))
    return progress_data(event, record_event_blocks(db, row.id, event, row.step))


def _eval(db: Session, row: TrainingSession, event: Event) -> EvalData:
    fields = {k: event.get(k) for k in EVAL_FIELDS}
    row.latest_metrics = {**(row.latest_metrics or {}), **fields}
    db.add(MetricPoint(session_id=row.id, step=event.get("step") or row.step, time=event.get("time") or 0.0, **fields))
    return EvalData(step=event.get("step"), **fields)


def _checkpoint(db: Session, row: TrainingSession, event: Event) -> CheckpointData:
    return CheckpointData(step=event.get("step"), path=event.get("path"))


def _peer(db: Session, row: TrainingSession, event: Event) -> PeerData:
    return PeerData(**{k: v for k, v in event.items() if k not in COMMON_FIELDS})


def _completed(db: Session, row: TrainingSession, event: Event) -> None:
    """The final numbers join the latest metrics; the executor reports the end when the process exits."""
    final = {k: event[k] for k in (*EVAL_FIELDS, "tokens_seen") if k in event}
    row.latest_metrics = {**(row.latest_metrics or {}), **final}


def _failed(db: Session, row: TrainingSession, event: Event) -> ErrorData | None:
    """An interruption is not an error; one the user asked for (cancelling) is not reported at all."""
    interrupted = bool(event.get("interrupted"))
    if not interrupted:
        row.error = event.get("error") or row.error
    if interrupted and row.status == SessionStatus.CANCELLING:
        return None
    return ErrorData(error=event.get("error"), step=event.get("step"), interrupted=interrupted)


_not_recorded: set[str] = set()  # sessions whose verdicts this process could not record (logged once each)


def record_round_verdicts(db: Session, row: TrainingSession, event: Event, chain: ChainService | None) -> None:
    """The step of EventType.VERDICT: the round's verdicts (each parsed, of this session and round) onto the
    chain's ledger, in this transaction. A round judged before keeps its first verdicts."""
    validator = str(event.get("validator") or "")[:200]
    try:
        round_ = int(event["round"])
    except (KeyError, TypeError, ValueError):
        skipped_once(row.id, validator or "?", "a verdict event without a round", kind="verdict")
        return
    verdicts = []
    for value in event.get("verdicts") or []:
        try:
            verdict = Verdict.parse(value)
        except BadRecord as exc:
            skipped_once(row.id, validator or "?", str(exc), kind="verdict")
            continue
        verdicts.append(verdict)
    if not verdicts:
        return
    try:
        ledger = chain.ledger if chain is not None else None
    except (KeyConfigError, OSError) as exc:
        ledger, why = None, f"the platform key cannot be loaded ({exc})"
    else:
        why = "this worker does not hold the platform ledger"
    if ledger is None:
        if row.id not in _not_recorded:
            _not_recorded.add(row.id)
            log.warning("the verdicts of session %s are not recorded: %s", row.id, why)
        return
    drawn = DrawnFrom.of(event, verify_params(row))
    log_malformed(row.id, validator, drawn)
    record_verdicts(db, ledger, row.id, round_, verdicts, validator, drawn)


def verify_params(row: TrainingSession) -> VerifyParams | None:
    """The session's verification parameters, recorded with each round's verdicts (None when its config cannot
    be read: the round's entry then says so and cannot be checked again)."""
    from cotrain.config.loader import validate_config
    from cotrain.core.validation import OWN_DATA_Z  # torch: loaded with the first verdict only

    try:
        config = validate_config(tomllib.loads(row.config_toml))
        return params_from_config(config.model_dump(), OWN_DATA_Z)
    except Exception as exc:  # a config the session ran with should always parse; never lose the verdicts
        log.warning("session %s: its verification parameters cannot be read from its config (%s)", row.id, exc)
        return None


APPLY: dict[str, Callable[[Session, TrainingSession, Event], MessageData | None]] = {
    EventType.STARTED: _started,
    EventType.PROGRESS: _progress,
    EventType.EVAL: _eval,
    EventType.CHECKPOINT: _checkpoint,
    EventType.PEER: _peer,
    EventType.COMPLETED: _completed,
    EventType.FAILED: _failed,
}
