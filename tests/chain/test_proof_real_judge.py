"""The proof's reason checks agree with the real judge (core/validation.py RoundJudge) on a simulated round of a
real tiny Llama: every reason it gives, recorded with its evidence as the monitor records it, verifies; the same
entry with one verdict turned around does not."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from sqlalchemy import select, text

from cotrain.chain.evidence import DrawnFrom, VerifyParams
from cotrain.chain.orm import LedgerEntryRow
from cotrain.chain.proof import verify_session_db
from cotrain.chain.verdicts import record_verdicts
from cotrain.core.validation import OWN_DATA_Z
from cotrain.p2p.verification import Reason
from tests.core.test_validation import (
    BATCH,
    DEADLINE,
    INNER_STEPS,
    ROUND,
    SEQ,
    SESSION,
    by_peer,
    commitment,
    evidence_of,
    noise_like,
    simulated,  # noqa: F401 (the module's simulated round)
)

PARAMS = VerifyParams(receipt_quorum=1, own_data_margin=0.0, own_data_z=OWN_DATA_Z, inner_steps=INNER_STEPS,
                      batch_size=BATCH, seq_length=SEQ)


def test_every_reason_of_the_real_judge_verifies(simulated, db_factory, ledger):  # noqa: F811
    rnd = simulated
    good = rnd.updates["honest-b"]
    nan = good.clone()
    nan[3] = math.nan
    served = {**rnd.updates, "noise": noise_like(rnd.updates["honest-a"], seed=1),
              "copier": rnd.updates["honest-a"].clone(), "no-commit": good, "late": good + 1e-3,
              "loner": good + 2e-3, "tampered": good + 3e-3, "gone": good + 4e-3, "nan": nan}
    evidence = evidence_of(rnd, served)
    del evidence.commitments["no-commit"]
    evidence.commitments["late"] = commitment(rnd, "late", served["late"], committed_at=DEADLINE + 0.5)
    evidence.commitments["copier"] = commitment(rnd, "copier", served["copier"], committed_at=DEADLINE - 1)
    for receipt in evidence.receipts.values():
        receipt.members.pop("loner", None)
    del evidence.receipts["loner"]
    evidence.updates["tampered"] = good + 5e-3
    evidence.updates["gone"] = None
    del evidence.updates["honest-c"]  # not drawn for the audit
    verdicts = rnd.judge().judge(evidence)
    reasons = {p: v.reason for p, v in by_peer(verdicts).items()}
    assert reasons == {
        "honest-a": Reason.VERIFIED, "honest-b": Reason.VERIFIED, "honest-c": Reason.VERIFIED,
        "wrong-shard": Reason.OWN_DATA_FAIL, "noise": Reason.OWN_DATA_FAIL, "copier": Reason.DUPLICATE_UPDATE,
        "no-commit": Reason.NO_COMMIT, "late": Reason.LATE, "loner": Reason.NOT_IN_GROUP,
        "tampered": Reason.SPOT_CHECK_FAIL, "gone": Reason.LATE, "nan": Reason.NON_FINITE,
    }
    event = {"deadline": evidence.deadline, "base_hash": evidence.base_hash,  # the validator's event, as JSON
             "evidence": json.loads(json.dumps({
                 "commitments": {p: c.as_dict() for p, c in evidence.commitments.items()},
                 "receipts": {p: r.as_dict() for p, r in evidence.receipts.items()}}))}
    with db_factory.begin() as db:
        record_verdicts(db, ledger, SESSION, ROUND, verdicts, "QmJudge", DrawnFrom.of(event, PARAMS))
    with db_factory() as db:
        report = verify_session_db(db, SESSION, ledger.trusted)
    assert report.ok, [str(p) for p in report.problems]
    assert report.verified_rounds == 3

    with db_factory.begin() as db:  # start over: a validator (signed by the platform) that passes the noise peer
        db.execute(text("DELETE FROM chain_round_verdicts"))
        db.execute(text("DELETE FROM chain_ledger"))
    lie = [replace(v, reason=Reason.VERIFIED, tokens=INNER_STEPS * BATCH * SEQ) if v.peer_id == "noise" else v
           for v in verdicts]
    with db_factory.begin() as db:
        record_verdicts(db, ledger, SESSION, ROUND, lie, "QmJudge", DrawnFrom.of(event, PARAMS))
        seq = db.scalars(select(LedgerEntryRow.seq)).one()
    with db_factory() as db:
        problems = [str(p) for p in verify_session_db(db, SESSION, ledger.trusted).problems]
    assert len(problems) == 1 and problems[0].startswith(f"ledger entry {seq} (verdict): peer noise: verified, but "
                                                         "its scores"), problems
