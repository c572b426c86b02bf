"""Applies the engine's events (docs/architecture.md, "Event stream") to the database and turns them into messages.

Idempotent: an event whose `seq` is not above the session's `engine_seq` was already applied,
so re-reading a stream after a restart changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from cotrain.server.messages import record_message
from cotrain.server.node_samples import clean_round, clean_system, record_event_blocks
from cotrain.server.orm import MetricPoint, SessionStatus, TrainingSession


def progress_payload(event: dict[str, Any], blocks: dict[str, Any] | None = None) -> dict[str, Any]:
    """The original design's `training.progress` data, from an engine `progress` event; plus
    (issue 19, additive) the cleaned `system` and DiLoCo `round` blocks when the event has them
    (`blocks`: what node_samples.record_event_blocks kept; cleaned here when not given)."""
    metrics = event.get("metrics") or {}
    if blocks is None:
        blocks = {k: v for k, v in (("system", clean_system(event.get("system"))),
                                    ("round", clean_round(event.get("round")))) if v is not None}
    return {
        "progress": round(float(event.get("progress") or 0.0), 2),
        "loss": event.get("loss"),
        "participants": event.get("participants", 1),
        "metrics": {
            "accuracy": metrics.get("accuracy"),
            "learningRate": metrics.get("learning_rate"),
            "batchSize": metrics.get("batch_size"),
            "tokensPerSecond": metrics.get("tokens_per_second"),
            "samplesPerSecond": metrics.get("samples_per_second"),
        },
        "step": event.get("step"),
        "totalSteps": event.get("total_steps"),
        "engineSeq": event.get("seq"),
        "time": event.get("time"),
        **blocks,
    }


def apply_engine_event(db: Session, row: TrainingSession, event: dict[str, Any]) -> list[dict[str, Any]]:
    """Update `row` (and metric history) from one engine event; return the messages to publish."""
    seq = int(event.get("seq") or 0)
    if seq <= row.engine_seq:
        return []
    row.engine_seq = seq
    kind = event.get("type")
    out: list[dict[str, Any]] = []
    if kind == "started":
        row.total_steps = event.get("total_steps") or row.total_steps
        row.step = event.get("step") or row.step
        if row.status == SessionStatus.STARTING:
            row.status = SessionStatus.RUNNING
        out.append(
            record_message(
                db, row.id, "training.status",
                {"status": row.status, "attempt": row.attempts, "error": None,
                 "resumedFrom": event.get("resumed_from"), "step": row.step, "totalSteps": row.total_steps,
                 "numParameters": event.get("num_parameters"), "device": event.get("device")},
            )
        )
    elif kind == "progress":
        metrics = event.get("metrics") or {}
        row.step = event.get("step") or row.step
        row.total_steps = event.get("total_steps") or row.total_steps
        row.progress = float(event.get("progress") or row.progress)
        row.loss = event.get("loss")
        row.participants = int(event.get("participants") or 1)
        row.latest_metrics = {**(row.latest_metrics or {}), **metrics}
        if row.status == SessionStatus.STARTING:
            row.status = SessionStatus.RUNNING
        db.add(
            MetricPoint(
                session_id=row.id, step=row.step, time=event.get("time") or 0.0, loss=row.loss,
                accuracy=metrics.get("accuracy"), learning_rate=metrics.get("learning_rate"),
                tokens_per_second=metrics.get("tokens_per_second"), participants=row.participants,
            )
        )
        blocks = record_event_blocks(db, row.id, event, row.step)  # issue 19: per node, per round
        out.append(record_message(db, row.id, "training.progress", progress_payload(event, blocks)))
    elif kind == "eval":
        fields = {k: event.get(k) for k in ("val_loss", "val_perplexity", "val_accuracy")}
        row.latest_metrics = {**(row.latest_metrics or {}), **fields}
        db.add(MetricPoint(session_id=row.id, step=event.get("step") or row.step, time=event.get("time") or 0.0, **fields))
        out.append(
            record_message(
                db, row.id, "training.eval",
                {"step": event.get("step"), "valLoss": fields["val_loss"],
                 "valPerplexity": fields["val_perplexity"], "valAccuracy": fields["val_accuracy"]},
            )
        )
    elif kind == "checkpoint":
        out.append(record_message(db, row.id, "training.checkpoint", {"step": event.get("step"), "path": event.get("path")}))
    elif kind == "peer":
        peer = {k: v for k, v in event.items() if k not in ("type", "session_id", "seq", "time")}
        out.append(record_message(db, row.id, "training.peer", peer))
    elif kind == "completed":
        row.latest_metrics = {
            **(row.latest_metrics or {}),
            **{k: event.get(k) for k in ("val_loss", "val_perplexity", "val_accuracy", "tokens_seen") if k in event},
        }
    elif kind == "failed":
        if not event.get("interrupted"):
            row.error = event.get("error") or row.error
        if row.status != SessionStatus.CANCELLING or not event.get("interrupted"):
            out.append(
                record_message(
                    db, row.id, "training.error",
                    {"error": event.get("error"), "step": event.get("step"), "interrupted": bool(event.get("interrupted"))},
                )
            )
    return out
