"""Realistic judged rounds for the proof tests: each peer's signed-looking commitment and receipts as a validator
gathers them (Commitment/Receipt.as_dict), the verdicts it draws from them, as one `verdict` engine event."""

from __future__ import annotations

import hashlib
from typing import Any

from cotrain.chain.evidence import VerifyParams
from cotrain.p2p.verification import Commitment, Reason, Receipt, Verdict

SESSION = "s1"
VALIDATOR = "QmValidator"
PARAMS = VerifyParams(receipt_quorum=1, own_data_margin=0.0, own_data_z=3.0, inner_steps=4, batch_size=2,
                      seq_length=8)
WORTH = PARAMS.tokens_per_round  # 64 tokens a verified round
CONFIG_TOML = """[train]
batch_size = 2
[data]
seq_length = 8
[checkpoint]
interval = 4
[distributed]
strategy = "diloco"
[distributed.diloco]
inner_steps = 4
"""
PASSING = {"own_drop": 0.5, "control_drop": 0.1, "own_data": 0.4, "own_data_z": 6.0, "norm": 1.5,
           "usefulness": 0.2}
FAILING = {"own_drop": 0.1, "control_drop": 0.1, "own_data": 0.0, "own_data_z": 0.1, "norm": 1.5}


def hexdigest(*parts: object, size: int = 64) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:size]


def base_hash(round_: int) -> str:
    return hexdigest("base", round_, size=16)


def commitment(peer: str, round_: int, at: float) -> Commitment:
    return Commitment(peer_id=peer, session_id=SESSION, round=round_, base_hash=base_hash(round_),
                      update_hash=hexdigest("update", peer, round_), shard_id=hexdigest("shard", peer, size=16),
                      inner_steps=PARAMS.inner_steps, param_hashes=(hexdigest("p", peer, size=16),),
                      committed_at=at)


def receipt(signer: str, round_: int, group: list[str]) -> Receipt:
    return Receipt(peer_id=signer, session_id=SESSION, round=round_,
                   members={p: hexdigest("update", p, round_) for p in group},
                   result_hash=hexdigest("avg", round_), signed_at=1000.0 + round_)


def verdict(peer: str, round_: int, reason: Reason, scores: dict[str, float] | None = None) -> Verdict:
    return Verdict(session_id=SESSION, round=round_, peer_id=peer, reason=reason, detail=f"{peer}: {reason}.",
                   scores=scores or {}, tokens=WORTH if reason == Reason.VERIFIED else 0)


def round_event(round_: int, seq: int = 1) -> dict[str, Any]:
    """Round `round_` of four peers as the validator judges it: p1 and p2 train and average together and pass;
    p3 averages too but its update does not lower the loss on its own shard more than on a control shard;
    p4 publishes no commitment; in round 2, p2 commits after the deadline and p1 is not drawn for the audit
    (verified on its commitment and receipts alone)."""
    deadline = 1000.0 + round_
    group = ["p1", "p2", "p3"]
    late = {"p2"} if round_ == 2 else set()
    commitments = {p: commitment(p, round_, deadline + 5 if p in late else deadline - 10) for p in group}
    receipts = {p: receipt(p, round_, group) for p in group}
    verdicts = [verdict("p1", round_, Reason.VERIFIED, PASSING if round_ == 1 else {}),  # round 2: not audited
                verdict("p2", round_, Reason.LATE) if late else verdict("p2", round_, Reason.VERIFIED, PASSING),
                verdict("p3", round_, Reason.OWN_DATA_FAIL, FAILING),
                verdict("p4", round_, Reason.NO_COMMIT)]
    return {"type": "verdict", "session_id": SESSION, "seq": seq, "time": deadline, "round": round_,
            "validator": VALIDATOR, "deadline": deadline, "base_hash": base_hash(round_), "seconds": 0.5,
            "verdicts": [v.as_dict() for v in verdicts],
            "evidence": {"commitments": {p: c.as_dict() for p, c in commitments.items()},
                         "receipts": {p: r.as_dict() for p, r in receipts.items()}}}
