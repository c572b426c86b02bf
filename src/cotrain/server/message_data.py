"""The data of each WebSocket message (docs/architecture.md, "WebSocket messages"): one model per message.

Python code builds and reads these models by their snake_case field names. The wire form, the JSON
that is stored for replay, fanned out and sent to clients, has camelCase keys (`totalSteps`,
`metrics.learningRate`); only `to_wire` writes it and only `parse_message` reads it, so no other
module spells a field twice. The models are the contract's one field list: `training.progress`
carries what `ProgressData` declares, in that order.

A field is on the wire when it was given: optional fields (a status message's `pid`, a progress
message's `system` block) are given only when they apply, so a message never grows null keys that
the contract does not have. The `system` and `round` blocks of a progress message and the engine's
peer record travel in the engine's own snake_case (issue 19's contract), as they always have.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from cotrain.server.schemas import OutModel


class MessageData(OutModel):
    """The `data` of one message kind, without its envelope (`sessionId`, `seq`)."""

    EVENT: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON object the message carries (its given fields only)."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class StatusData(MessageData):
    """`training.status`: the session's status, and what changed with it."""

    EVENT: ClassVar[str] = "training.status"
    status: str
    attempt: int
    error: str | None = None
    updated: bool | None = None  # the request or priority changed (session_service)
    pid: int | None = None  # the engine process started (executor), with its devices
    gpus: list[int] | None = None
    cpus: list[int] | None = None
    exit_code: int | None = None  # the engine process ended (executor), and how:
    detail: str | None = None  # cancelled: why it was killed
    model_version: dict[str, Any] | None = None  # completed: the version it registered
    retry_at: float | None = None  # failed, retried at this unix time
    resumed_from: str | None = None  # the engine started (the monitor's `started` event)
    step: int | None = None
    total_steps: int | None = None
    num_parameters: int | None = None
    device: str | None = None


class ProgressMetrics(OutModel):
    accuracy: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    tokens_per_second: float | None = None
    samples_per_second: float | None = None


class ProgressData(MessageData):
    """`training.progress`: the reference message's fields, then the engine's own numbers, and (issue
    19) the cleaned `system` and DiLoCo `round` blocks when the event had them."""

    EVENT: ClassVar[str] = "training.progress"
    progress: float = 0.0
    loss: float | None = None
    participants: int | None = 1
    metrics: ProgressMetrics = Field(default_factory=ProgressMetrics)
    step: int | None = None
    total_steps: int | None = None
    engine_seq: int | None = None
    time: float | None = None
    system: dict[str, Any] | None = None
    round: dict[str, Any] | None = None


class EvalData(MessageData):
    EVENT: ClassVar[str] = "training.eval"
    step: int | None = None
    val_loss: float | None = None
    val_perplexity: float | None = None
    val_accuracy: float | None = None


class CheckpointData(MessageData):
    EVENT: ClassVar[str] = "training.checkpoint"
    step: int | None = None
    path: str | None = None


class ErrorData(MessageData):
    EVENT: ClassVar[str] = "training.error"
    error: str | None = None
    step: int | None = None
    interrupted: bool = False


class PeerData(MessageData):
    """`training.peer`: the engine's record of a peer joining, leaving or reporting, as it wrote it
    (`peer_id`, `event`, the peer's numbers): the record is the p2p layer's, not this API's."""

    EVENT: ClassVar[str] = "training.peer"
    model_config = ConfigDict(extra="allow")


KINDS: dict[str, type[MessageData]] = {
    kind.EVENT: kind for kind in (StatusData, ProgressData, EvalData, CheckpointData, ErrorData, PeerData)
}


def parse_message(message: dict[str, Any]) -> MessageData | None:
    """The typed data of a message in its wire form (stored, fanned out or received), or None for
    an event that is not a session message."""
    kind = KINDS.get(str(message.get("event")))
    return None if kind is None else kind.model_validate(message.get("data") or {})
