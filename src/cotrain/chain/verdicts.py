"""A validator's verdicts on a session's DiLoCo rounds (cotrain.p2p.verification.Verdict), kept on the ledger.

One VERDICT ledger entry per judged round holds that round's verdicts, one per member; each verdict is copied
into a `chain_round_verdicts` row (checked against its entry by `Ledger.verify`). A round is judged once: the
first verdicts recorded for it stay. A session that has verdicts is settled by them (`verdict_contributions`):
a peer is paid for the tokens of its VERIFIED rounds only (nothing at all once a spot check of it failed), and
its self-reported progress records no longer count. The server hands the verdict events of a session's own
engine to `record_verdicts` in the same transaction that applies the event (cotrain.server.monitor).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.chain.contributions import Contribution, Limits, _address
from cotrain.chain.evidence import DrawnFrom
from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import ContributionStatus, LedgerKind, RoundVerdictRow
from cotrain.p2p.progress import MAX_TOKENS, PeerProgress, skipped_once
from cotrain.p2p.verification import REASON_SENTENCES, Reason, Verdict

VOIDING = {  # reasons that void a peer's credit for the whole session (its update was caught being bad)
    Reason.SPOT_CHECK_FAIL: "a spot check failed",
    Reason.OWN_DATA_FAIL: "its update did not show its own shard",
    Reason.DUPLICATE_UPDATE: "it committed a copy of another peer's update",
    Reason.NON_FINITE: "its update was not finite",
}

RECENT_ROUNDS = 5  # how many of a peer's latest rounds the read view lists with their sentence
VERDICT_FIELDS = ("peer_id", "reason", "detail", "scores", "tokens")  # a verdict as its ledger entry holds it


def ledger_verdict(verdict: Verdict) -> dict[str, Any]:
    """One verdict as the ledger entry of its round holds it (session, round and validator are the entry's)."""
    return {"peer_id": verdict.peer_id, "reason": str(verdict.reason), "detail": verdict.detail,
            "scores": dict(verdict.scores), "tokens": int(verdict.tokens)}


def record_verdicts(db: Session, ledger: Ledger, session_id: str, round_: int, verdicts: Sequence[Verdict],
                    validator: str, drawn: DrawnFrom | None = None) -> list[RoundVerdictRow]:
    """Record round `round_`'s verdicts in the caller's transaction: one ledger entry, one row per peer.
    Idempotent: a round judged before keeps its first verdicts (returned). Verdicts of another session or
    round, and a second verdict on the same peer, are skipped (logged). `drawn`: what they were drawn from
    (deadline, base hash, commitments, receipts, the session's verification params), kept in the entry's body
    so that cotrain.chain.proof can check every reason again."""
    existing = list(db.scalars(select(RoundVerdictRow).where(
        RoundVerdictRow.session_id == session_id, RoundVerdictRow.round == round_).order_by(RoundVerdictRow.peer_id)))
    if existing:
        return existing
    kept: dict[str, Verdict] = {}
    for verdict in verdicts:
        if verdict.session_id != session_id or verdict.round != round_:
            skipped_once(session_id, validator, f"a verdict on round {verdict.round} of session "
                         f"{verdict.session_id} came with round {round_}", kind="verdict")
        elif verdict.peer_id in kept:
            skipped_once(session_id, validator, f"a second verdict on peer {verdict.peer_id}", kind="verdict")
        else:
            kept[verdict.peer_id] = verdict
    if not kept:
        return []
    judged = [ledger_verdict(kept[peer]) for peer in sorted(kept)]
    body = {"session_id": session_id, "round": round_, "validator": validator, "verdicts": judged,
            **(drawn.as_body() if drawn is not None else {})}
    entry = ledger.append(db, LedgerKind.VERDICT, session_id, body)
    rows = [RoundVerdictRow(session_id=session_id, round=round_, validator=validator, ledger_seq=entry.seq, **v)
            for v in judged]
    db.add_all(rows)
    db.flush()
    return rows


def verdicts_of(db: Session, session_id: str) -> list[RoundVerdictRow]:
    """A session's verdicts, by round then peer."""
    return list(db.scalars(select(RoundVerdictRow).where(RoundVerdictRow.session_id == session_id)
                           .order_by(RoundVerdictRow.round, RoundVerdictRow.peer_id)))


def has_verdicts(db: Session, session_id: str) -> bool:
    return db.scalars(select(RoundVerdictRow.id).where(RoundVerdictRow.session_id == session_id).limit(1)).first() \
        is not None


# ---- settlement by verified rounds ---------------------------------------------------------------------
def tokens_out_of_range(row: RoundVerdictRow, limits: Limits) -> str | None:
    """Why a verified round's `tokens` cannot be true, or None."""
    if not 0 < row.tokens <= MAX_TOKENS:
        return f"tokens: {row.tokens} is not in 1..{MAX_TOKENS}"
    per_round = limits.tokens_per_outer_round
    if per_round is not None and row.tokens > per_round * limits.slack:
        return f"tokens: round {row.round} is worth {row.tokens:,}, more than one round can hold ({per_round:,})"
    return None


def verdict_contributions(session_id: str, rows: Iterable[RoundVerdictRow], records: Iterable[PeerProgress],
                          limits: Limits | None, bound: Mapping[str, str] | None) -> list[Contribution]:
    """One Contribution per peer that was judged or reported progress, sorted by peer id. Tokens are the sum of
    its VERIFIED rounds' `tokens` (an out-of-range one is skipped, logged); `outer_rounds` counts those rounds.
    A round of any other reason (late, no commitment, not in the group) only does not count, but a peer whose
    update was caught being bad (`VOIDING`: a failed spot check or own-data check, a copy, a non-finite update)
    loses its credit for the whole session (0 tokens, excluded), and the pool goes to the others pro rata: the
    validator audits a small sample of members each round, so a cheat must lose more than the round it was
    caught in. (An honest update shows its shard far above the own-data threshold with the default shards read
    about 4 times a round, and a failure is measured again on up to 512 samples first: core/validation.py.)
    Progress records only describe the peer (device, tokens/s; its
    wallet when `bound` is None). A peer is paid to its proven wallet (`bound`, peer id → address) only."""
    limits = limits or Limits()
    judged: dict[str, list[RoundVerdictRow]] = defaultdict(list)
    for row in rows:
        judged[row.peer_id].append(row)
    latest: dict[str, PeerProgress] = {}
    for record in records:
        if record.session_id == session_id and (record.peer_id not in latest
                                                or record.updated > latest[record.peer_id].updated):
            latest[record.peer_id] = record
    return [_one_peer(session_id, peer, judged.get(peer, []), latest.get(peer), limits, bound)
            for peer in sorted(set(judged) | set(latest))]


def _one_peer(session_id: str, peer: str, rows: list[RoundVerdictRow], record: PeerProgress | None, limits: Limits,
              bound: Mapping[str, str] | None) -> Contribution:
    verified = []
    for row in rows:
        if row.reason != Reason.VERIFIED:
            continue
        why = tokens_out_of_range(row, limits)
        if why is None:
            verified.append(row)
        else:
            skipped_once(session_id, peer, why, kind="verdict")
    caught = sorted(r.round for r in rows if r.reason in VOIDING)
    void = sum(r.tokens for r in verified) if caught else 0
    if caught:
        verified = []  # a failed spot check voids the whole session's credit, not just its round
    tokens = sum(r.tokens for r in verified)
    address = bound.get(peer) if bound is not None else _address(record.wallet if record is not None else None)
    reasons = []
    if address is None:
        reasons.append("no wallet is proven for this peer; bind it with `cotrain join --wallet-key-file` "
                       "(or `cotrain rewards bind`)")
    if caught:
        what = [VOIDING[Reason(reason)] for reason in sorted({r.reason for r in rows if r.reason in VOIDING})]
        reasons.append(f"{' and '.join(what)} in round{'s' if len(caught) > 1 else ''} "
                       + ", ".join(map(str, caught)) + f": its credit for the whole session ({void:,} tokens of "
                       "verified rounds) is void and goes to the other peers")
    elif not rows:
        reasons.append("none of its rounds was judged by the session's validator")
    elif not verified:
        failed = Counter(r.reason for r in rows)
        reasons.append(f"none of its {len(rows)} judged round(s) was verified ("
                       + ", ".join(f"{reason}: {n}" for reason, n in sorted(failed.items())) + ")")
    tps = record.tokens_per_second if record is not None else 0.0
    return Contribution(
        session_id=session_id,
        peer_id=peer,
        address=address,
        samples=tokens // limits.seq_length if limits.seq_length else 0,
        tokens=tokens,
        outer_rounds=len(verified),
        compute_seconds=round(tokens / tps, 3) if tps > 0 else 0.0,
        tokens_per_second=float(tps),
        device=record.device if record is not None else "",
        status=ContributionStatus.EXCLUDED if reasons else ContributionStatus.VERIFIED,
        reason="; ".join(reasons),
    )


# ---- read view: per-peer round outcomes ------------------------------------------------------------------
@dataclass(frozen=True)
class RoundOutcome:
    round: int
    reason: str
    sentence: str  # REASON_SENTENCES of the reason: what happened, in plain words
    detail: str


@dataclass(frozen=True)
class PeerRounds:
    peer_id: str
    verified_rounds: int = 0
    judged_rounds: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> rounds
    recent: list[RoundOutcome] = field(default_factory=list)  # the latest rounds first


def sentence_of(reason: str) -> str:
    try:
        return REASON_SENTENCES[Reason(reason)]
    except (ValueError, KeyError):
        return ""


def round_outcomes(db: Session, session_id: str, recent: int = RECENT_ROUNDS) -> dict[str, PeerRounds]:
    """Peer id → its judged rounds in `session_id`: how many were verified, how many per reason, and the
    latest `recent` with their reason's sentence and the validator's detail."""
    by_peer: dict[str, list[RoundVerdictRow]] = defaultdict(list)
    for row in verdicts_of(db, session_id):
        by_peer[row.peer_id].append(row)
    views = {}
    for peer, rows in by_peer.items():
        latest = sorted(rows, key=lambda r: r.round, reverse=True)[:recent]
        views[peer] = PeerRounds(
            peer_id=peer,
            verified_rounds=sum(r.reason == Reason.VERIFIED for r in rows),
            judged_rounds=len(rows),
            reasons=dict(sorted(Counter(r.reason for r in rows).items())),
            recent=[RoundOutcome(r.round, r.reason, sentence_of(r.reason), r.detail) for r in latest],
        )
    return views
