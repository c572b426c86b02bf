"""What a round's verdicts were drawn from, as its VERDICT ledger entry keeps it, so that anyone holding the
session's ledger entries can check every verdict's reason again (cotrain.chain.proof).

A VERDICT entry's body holds, besides the verdicts: `deadline` (DHT time; a commitment made after it is late),
`base_hash` (the global params the round started from), `evidence` ({"commitments": {peer: Commitment},
"receipts": {peer: Receipt}}, each parsed strictly, a malformed one dropped) and `params`: the session's
verification parameters (`VerifyParams`). The params are in every VERDICT entry, so each round can be checked
on its own and a change of them between rounds shows. The chain does not import core: the server passes the
own-data z threshold (core/validation.py OWN_DATA_Z) in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from cotrain.p2p.progress import BadRecord, skipped_once
from cotrain.p2p.verification import HEX, MAX_HASH, MIN_HASH, Commitment, Receipt

T = TypeVar("T", Commitment, Receipt)
MAX_PEERS = 4096  # commitments or receipts one round may hold


@dataclass(frozen=True)
class VerifyParams:
    """The session's verification parameters a verdict is checked with. Tokens of a verified round are
    inner_steps × batch_size × seq_length (the inner steps its commitment names, at most `inner_steps`)."""

    receipt_quorum: int
    own_data_margin: float
    own_data_z: float
    inner_steps: int
    batch_size: int
    seq_length: int

    @property
    def tokens_per_round(self) -> int:
        return self.inner_steps * self.batch_size * self.seq_length

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tokens_per_round": self.tokens_per_round}

    @classmethod
    def parse(cls, value: Any) -> VerifyParams:
        """ValueError naming what is malformed."""
        if not isinstance(value, Mapping):
            raise ValueError("params: not an object")
        ints = {k: value.get(k) for k in ("receipt_quorum", "inner_steps", "batch_size", "seq_length")}
        floats = {k: value.get(k) for k in ("own_data_margin", "own_data_z")}
        for name, number in ints.items():
            if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 2**31:
                raise ValueError(f"params: {name} is not a positive integer")
        for name, number in floats.items():
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise ValueError(f"params: {name} is not a finite number")
        params = cls(own_data_margin=float(value["own_data_margin"]), own_data_z=float(value["own_data_z"]),
                     **{k: int(v) for k, v in ints.items()})  # type: ignore[arg-type]
        if value.get("tokens_per_round", params.tokens_per_round) != params.tokens_per_round:
            raise ValueError("params: tokens_per_round is not inner_steps × batch_size × seq_length")
        return params


def params_from_config(config: Mapping[str, Any], own_data_z: float) -> VerifyParams | None:
    """The verification parameters of a DiLoCo session's validated config (as a dict with its defaults filled
    in: CotrainConfig.model_dump()); None for another strategy."""
    dist = config.get("distributed", {})
    if dist.get("strategy") != "diloco":
        return None
    diloco = dist.get("diloco", {})
    return VerifyParams(receipt_quorum=int(diloco["receipt_quorum"]), own_data_margin=float(diloco["own_data_margin"]),
                        own_data_z=float(own_data_z), inner_steps=int(diloco["inner_steps"]),
                        batch_size=int(config["train"]["batch_size"]), seq_length=int(config["data"]["seq_length"]))


@dataclass(frozen=True)
class DrawnFrom:
    """A round's evidence as its VERDICT entry holds it. None/empty where the entry does not say."""

    deadline: float | None = None
    base_hash: str | None = None
    commitments: dict[str, Commitment] = field(default_factory=dict)
    receipts: dict[str, Receipt] = field(default_factory=dict)
    params: VerifyParams | None = None
    malformed: list[str] = field(default_factory=list)  # what was dropped, and why

    @classmethod
    def of(cls, value: Mapping[str, Any], params: VerifyParams | Mapping[str, Any] | None = None) -> DrawnFrom:
        """Parse a verdict event's (or an entry body's) `deadline`, `base_hash`, `evidence` and `params`
        strictly: each malformed part is dropped and named in `malformed`."""
        malformed: list[str] = []
        deadline = value.get("deadline")
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not math.isfinite(deadline):
            if deadline is not None:
                malformed.append("deadline: not a finite number")
            deadline = None
        base_hash = value.get("base_hash")
        if not isinstance(base_hash, str) or not MIN_HASH <= len(base_hash) <= MAX_HASH or not HEX.fullmatch(base_hash):
            if base_hash is not None:
                malformed.append("base_hash: not lowercase hex")
            base_hash = None
        evidence = value.get("evidence")
        evidence = evidence if isinstance(evidence, Mapping) else {}
        raw_params = params if params is not None else value.get("params")
        parsed_params: VerifyParams | None = None
        if isinstance(raw_params, VerifyParams):
            parsed_params = raw_params
        elif raw_params is not None:
            try:
                parsed_params = VerifyParams.parse(raw_params)
            except ValueError as exc:
                malformed.append(str(exc))
        return cls(
            deadline=None if deadline is None else float(deadline),
            base_hash=base_hash,
            commitments=_by_peer(evidence.get("commitments"), Commitment.parse, "commitment", malformed),
            receipts=_by_peer(evidence.get("receipts"), Receipt.parse, "receipt", malformed),
            params=parsed_params,
            malformed=malformed,
        )

    @property
    def complete(self) -> bool:
        """Whether the verdicts can be checked against it: deadline, base hash and params are known."""
        return self.deadline is not None and self.base_hash is not None and self.params is not None

    def as_body(self) -> dict[str, Any]:
        """The keys this adds to a VERDICT entry's body (JSON-ready)."""
        return {
            "deadline": self.deadline,
            "base_hash": self.base_hash,
            "evidence": {"commitments": {p: c.as_dict() for p, c in sorted(self.commitments.items())},
                         "receipts": {p: r.as_dict() for p, r in sorted(self.receipts.items())}},
            "params": None if self.params is None else self.params.as_dict(),
        }


def _by_peer(value: Any, parse: Callable[[Any], T], what: str, malformed: list[str]) -> dict[str, T]:
    if not isinstance(value, Mapping):
        return {}
    kept: dict[str, T] = {}
    for peer, record in list(value.items())[:MAX_PEERS]:
        if not isinstance(peer, str) or not 0 < len(peer) <= 200:
            malformed.append(f"a {what} under a malformed peer id")
            continue
        try:
            kept[peer] = parse(record)
        except BadRecord as exc:
            malformed.append(f"the {what} of peer {peer}: {exc}")
    return kept


def log_malformed(session_id: str, validator: str, drawn: DrawnFrom) -> None:
    for why in drawn.malformed:
        skipped_once(session_id, validator or "?", f"verdict evidence: {why}", kind="verdict")
