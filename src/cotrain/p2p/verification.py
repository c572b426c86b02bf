"""The vocabulary of verified contributions: what a peer commits to, what a group signs, what a validator says.

A DiLoCo peer publishes a `Commitment` for round r before averaging (the hash of the params it started from,
the digest of its pseudo-gradient, its shard and its param hashes every k inner steps); after a successful
all-reduce each member publishes a `Receipt` naming the group and every member's update digest. A validator
judges each member of the round and says so in a `Verdict` with one `Reason`.

No hivemind or torch import here, so the chain and the server can use these types cheaply. Anything read from
the network goes through `parse`, which keeps only known fields within bounds and raises `BadRecord` saying
which field is wrong (the progress record's rules: `cotrain.p2p.progress`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, TypeVar

from cotrain.p2p.progress import MAX_INT32, MAX_TIME, MAX_TOKENS, BadRecord, _number, _text

__all__ = ["MAX_MEMBERS", "MAX_PARAM_HASHES", "REASON_SENTENCES", "Commitment", "Reason", "Receipt", "Verdict"]


class Reason(StrEnum):
    """Why a peer's round counts or does not (stored and shown as its string)."""

    VERIFIED = "verified"
    NO_COMMIT = "no_commit"
    NOT_IN_GROUP = "not_in_group"
    OWN_DATA_FAIL = "own_data_fail"
    SPOT_CHECK_FAIL = "spot_check_fail"
    DUPLICATE_UPDATE = "duplicate_update"
    NON_FINITE = "non_finite"
    LATE = "late"


REASON_SENTENCES: dict[Reason, str] = {
    Reason.VERIFIED: "Your work in this round was checked and counts toward your reward.",
    Reason.NO_COMMIT: "Your peer did not publish a commitment for this round, so its work could not be checked.",
    Reason.NOT_IN_GROUP: "Not enough other peers of the averaging group confirmed receiving your update this round.",
    Reason.OWN_DATA_FAIL: "Your update did not improve the model on your assigned data more than on data "
                          "assigned to nobody, so it does not look trained on your shard.",
    Reason.SPOT_CHECK_FAIL: "Your peer could not hand over the update it committed to, or what it sent did not "
                            "match its commitment.",
    Reason.DUPLICATE_UPDATE: "Your update was the same as another peer's, and it did not show training on your "
                             "own data.",
    Reason.NON_FINITE: "Your update held NaN or infinite values, or was far larger than any honest update.",
    Reason.LATE: "Your commitment was published after the round's deadline.",
}

MAX_PARAM_HASHES = 1024  # k-step checkpoints a commitment may list: far more than any sane inner_steps / k
MAX_MEMBERS = 256  # peers one receipt may name: an averaging group is never larger
MAX_INNER_STEPS = 10**6
MIN_HASH, MAX_HASH = 8, 128  # hex digits of a hash: 16 (params_hash, shard_id) or 64 (tensor_digest) in practice
MAX_DETAIL = 1000  # characters of a verdict's one sentence
MAX_SCORES = 32
MAX_LABEL = 64  # characters of a score's name
MAX_SCORE = 1e15  # a score's magnitude: loss drops and norms are far below it
HEX = re.compile(r"[0-9a-f]+")  # lowercase only: digests are compared as strings


@dataclass(frozen=True)
class Commitment:
    """What a peer binds itself to for round `round` before averaging. `committed_at` is DHT time."""

    peer_id: str
    session_id: str
    round: int
    base_hash: str
    update_hash: str
    shard_id: str
    inner_steps: int
    param_hashes: tuple[str, ...]
    committed_at: float
    first_step: int = 0  # the global 0-based step of the round's first inner step (its learning rate's step)
    batch_size: int = 0  # samples per inner step of this peer (0: the session's); a volunteer may use fewer
    shard_samples: int = 0  # samples in its round shard (0: the session's default for its batch size)

    @classmethod
    def parse(cls, value: Any) -> Commitment:
        """A stored value as a Commitment; BadRecord saying which field is malformed or out of range."""
        fields = _mapping(value)
        return cls(
            peer_id=_get(fields, "peer_id", _text),
            session_id=_get(fields, "session_id", _text),
            round=_get(fields, "round", _round),
            base_hash=_get(fields, "base_hash", _hex),
            update_hash=_get(fields, "update_hash", _hex),
            shard_id=_get(fields, "shard_id", _hex),
            inner_steps=_get(fields, "inner_steps", _inner_steps),
            param_hashes=_get(fields, "param_hashes", _param_hashes),
            committed_at=_get(fields, "committed_at", _time),
            first_step=_get(fields, "first_step", _round) if "first_step" in fields else 0,
            batch_size=_get(fields, "batch_size", _batch_size) if "batch_size" in fields else 0,
            shard_samples=_get(fields, "shard_samples", _round) if "shard_samples" in fields else 0,
        )

    def samples_per_step(self, session_batch: int) -> int:
        """The batch this peer trained with (the session's when it did not say)."""
        return self.batch_size or session_batch

    def shard_size(self, session_shard: int, session_batch: int) -> int:
        """Samples of its round shard: as it said (every commitment says since it was added), else the session's
        scaled to its batch (the default shard is proportional to the batch)."""
        if self.shard_samples:
            return self.shard_samples
        return session_shard * self.samples_per_step(session_batch) // session_batch

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (param_hashes as a list)."""
        return asdict(self) | {"param_hashes": list(self.param_hashes)}


def round_tokens(c: Commitment, session_batch: int, seq_length: int) -> int:
    """Tokens a verified round of commitment `c` is worth: its inner steps × its batch (never more than the
    session's, whatever it claims) × the sequence length."""
    return c.inner_steps * min(c.samples_per_step(session_batch), session_batch) * seq_length


@dataclass(frozen=True)
class Receipt:
    """A group member's signed word, after a successful all-reduce of round `round`: who was in the group, the
    digest of each member's update it received, and the digest of the averaged result. `signed_at` is DHT time."""

    peer_id: str
    session_id: str
    round: int
    members: dict[str, str]
    result_hash: str
    signed_at: float

    @classmethod
    def parse(cls, value: Any) -> Receipt:
        """A stored value as a Receipt; BadRecord saying which field is malformed or out of range."""
        fields = _mapping(value)
        return cls(
            peer_id=_get(fields, "peer_id", _text),
            session_id=_get(fields, "session_id", _text),
            round=_get(fields, "round", _round),
            members=_get(fields, "members", _members),
            result_hash=_get(fields, "result_hash", _hex),
            signed_at=_get(fields, "signed_at", _time),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """A validator's judgement of one peer's round. `tokens` is what the round is worth if verified, else 0."""

    session_id: str
    round: int
    peer_id: str
    reason: Reason
    detail: str
    scores: dict[str, float]
    tokens: int

    @classmethod
    def parse(cls, value: Any) -> Verdict:
        """A stored value (e.g. from a `verdict` event) as a Verdict; BadRecord saying which field is wrong."""
        fields = _mapping(value)
        return cls(
            session_id=_get(fields, "session_id", _text),
            round=_get(fields, "round", _round),
            peer_id=_get(fields, "peer_id", _text),
            reason=_get(fields, "reason", _reason),
            detail=_get(fields, "detail", _detail),
            scores=_get(fields, "scores", _scores),
            tokens=_get(fields, "tokens", _tokens),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, the reason as its string."""
        return asdict(self) | {"reason": str(self.reason)}


EXCLUDING = frozenset({Reason.OWN_DATA_FAIL, Reason.DUPLICATE_UPDATE, Reason.NON_FINITE, Reason.SPOT_CHECK_FAIL})
"""Reasons that get a peer excluded from the session's later groups: its update was bad, not merely absent."""
MAX_EXCLUDED = 1024


@dataclass(frozen=True)
class Exclusions:
    """A validator's signed list of the peers of a session that failed a check (`EXCLUDING`), as of round
    `round`: peer id → the first round it is excluded from. The peers that trust this validator
    (`distributed.diloco.validators`), the validator included, refuse to average with it from that round on; one
    round later than the one after it was caught, so every honest peer has read the list by then and they all
    leave it out of the same round (peers that disagreed would form groups too small to apply it)."""

    peer_id: str
    session_id: str
    round: int
    excluded: dict[str, int]
    updated: float

    @classmethod
    def parse(cls, value: Any) -> Exclusions:
        fields = _mapping(value)
        return cls(
            peer_id=_get(fields, "peer_id", _text),
            session_id=_get(fields, "session_id", _text),
            round=_get(fields, "round", _round),
            excluded=_get(fields, "excluded", _excluded),
            updated=_get(fields, "updated", _time),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- field checks: each raises ValueError/TypeError with a short why; `_get` names the field ----------
T = TypeVar("T")


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRecord("it is not a mapping")
    return value


def _get(fields: Mapping[str, Any], name: str, check: Callable[[Any], T]) -> T:
    if name not in fields:
        raise BadRecord(f"it has no {name!r}")
    try:
        return check(fields[name])
    except (TypeError, ValueError) as exc:
        raise BadRecord(f"its {name}: {exc}") from None


def _round(value: Any) -> int:
    return int(_number(value, int, MAX_INT32))


def _inner_steps(value: Any) -> int:
    steps = int(_number(value, int, MAX_INNER_STEPS))
    if steps < 1:
        raise ValueError("a round has at least one inner step")
    return steps


def _batch_size(value: Any) -> int:
    return int(_number(value, int, MAX_INNER_STEPS))


def _tokens(value: Any) -> int:
    return int(_number(value, int, MAX_TOKENS))


def _time(value: Any) -> float:
    return float(_number(value, float, MAX_TIME))


def _hex(value: Any) -> str:
    if not isinstance(value, str) or not MIN_HASH <= len(value) <= MAX_HASH or not HEX.fullmatch(value):
        raise ValueError(f"{str(value)[:40]!r} is not {MIN_HASH} to {MAX_HASH} lowercase hex digits")
    return value


def _param_hashes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("not a list")
    if len(value) > MAX_PARAM_HASHES:
        raise ValueError(f"{len(value)} entries, more than {MAX_PARAM_HASHES}")
    return tuple(_hex(item) for item in value)


def _excluded(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise TypeError("not a mapping")
    if len(value) > MAX_EXCLUDED:
        raise ValueError(f"{len(value)} peers, at most {MAX_EXCLUDED}")
    return {_text(peer): _round(from_round) for peer, from_round in value.items()}


def _members(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError("not a mapping")
    if not 1 <= len(value) <= MAX_MEMBERS:
        raise ValueError(f"{len(value)} entries, not 1 to {MAX_MEMBERS}")
    return {_text(peer): _hex(digest) for peer, digest in value.items()}


def _reason(value: Any) -> Reason:
    if not isinstance(value, str) or value not in Reason._value2member_map_:
        raise ValueError(f"{str(value)[:40]!r} is not one of {', '.join(Reason)}")
    return Reason(value)


def _detail(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_DETAIL:
        raise ValueError(f"not a string of at most {MAX_DETAIL} characters")
    return value


def _scores(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError("not a mapping")
    if len(value) > MAX_SCORES:
        raise ValueError(f"{len(value)} entries, more than {MAX_SCORES}")
    return {_label(name): _score(score) for name, score in value.items()}


def _label(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL:
        raise ValueError(f"{str(value)[:40]!r} is not a name of 1 to {MAX_LABEL} characters")
    return value


def _score(value: Any) -> float:
    """A finite number of sane magnitude (scores may be negative: a loss can rise)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or abs(value) > MAX_SCORE:
        raise ValueError(f"{value!r} is not a finite number within ±{MAX_SCORE:g}")
    return float(value)
