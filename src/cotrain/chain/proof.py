"""Proof of a session's rewards, rebuilt from its ledger entries alone (`cotrain verify-session`,
GET /api/v1/rewards/sessions/{id}/proof, and offline from `cotrain ledger export`).

Checks, each problem naming the ledger entry (seq, kind) where it shows:
* every entry is intact and signed by a trusted key, and links to the entry before it when that one is known
  (cotrain.chain.ledger.entry_problems: the same check as `cotrain ledger verify`);
* every verdict's reason agrees with the evidence its VERDICT entry holds (cotrain.chain.evidence), in the
  judge's order (core/validation.py): no_commit ⇔ no valid commitment; late ⇔ committed after the deadline
  (or, once vouched for, an update that could not be downloaded); not_in_group ⇔ fewer than `receipt_quorum`
  receipts of other members naming its committed update; duplicate_update ⇐ another member committed the same
  update before it; the other reasons need a commitment that passed those. An audited verified verdict's
  scores pass the own-data rule (own_drop > 0, own_data > own_data_margin, own_data_z ≥ the z threshold when
  measured) and an own_data_fail's fail it; a member not drawn for the audit is verified on its commitment
  and receipts alone (no own-data scores). Verified tokens = the committed inner steps × batch_size ×
  seq_length; any other reason earns 0 tokens. (Spot checks, non-finite updates and downloads need the
  updates themselves, which the ledger does not hold.)
* the contributions are those settlement would compute from these verdicts (`verdict_contributions`, the
  very function settlement calls); a peer's wallet and device are taken from its CONTRIBUTION entry (the
  bindings and progress records are not in the ledger, and describe the peer rather than what it earned);
* the rewards are `split_pool` of the pool over `weights` of those contributions (again settlement's own
  functions), and every payout recorded due or sent (committed) pays each address exactly its reward, once;
  with the aptos backend the amounts of each batch's signed `batch_transfer` are compared too when the
  caller hands them in (DB mode: decoded from chain_payout_batches.signed_txn).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.chain import aptos_tx
from cotrain.chain.contributions import Contribution, Limits, weights
from cotrain.chain.evidence import DrawnFrom, VerifyParams
from cotrain.chain.ledger import GENESIS_PREV, entry_problems
from cotrain.chain.orm import BatchStatus, LedgerEntryRow, LedgerKind, PayoutBatchRow, RoundVerdictRow
from cotrain.chain.rewards import split_pool
from cotrain.chain.verdicts import verdict_contributions
from cotrain.p2p.progress import BadRecord, PeerProgress
from cotrain.p2p.verification import Commitment, Reason, Verdict, round_tokens

ENTRY_FIELDS = ("seq", "kind", "session_id", "body", "created_at", "prev_hash", "entry_hash", "signer", "signature")
COMPARED = ("address", "samples", "tokens", "outer_rounds", "status", "reason")  # what the verdicts decide
SCREENED = {Reason.NO_COMMIT, Reason.LATE, Reason.NOT_IN_GROUP}


@dataclass(frozen=True)
class Entry:
    """One ledger entry, as chain_ledger holds it and `cotrain ledger export` writes it (one JSON line)."""

    seq: int
    kind: str
    session_id: str
    body: str
    created_at: float
    prev_hash: str
    entry_hash: str
    signer: str
    signature: str

    @classmethod
    def of_row(cls, row: LedgerEntryRow) -> Entry:
        return cls(**{name: getattr(row, name) for name in ENTRY_FIELDS})

    @classmethod
    def parse(cls, value: Any) -> Entry:
        """ValueError when a field is missing or of the wrong type."""
        if not isinstance(value, Mapping):
            raise ValueError("not an object")
        types: dict[str, type | tuple[type, ...]] = {"seq": int, "created_at": (int, float)}
        for name in ENTRY_FIELDS:
            if not isinstance(value.get(name), types.get(name, str)) or isinstance(value.get(name), bool):
                raise ValueError(f"{name} is missing or not a {'number' if name in types else 'string'}")
        return cls(**{name: value[name] for name in ENTRY_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Problem:
    seq: int | None
    kind: str
    what: str

    def __str__(self) -> str:
        return f"ledger entry {self.seq} ({self.kind}): {self.what}" if self.seq is not None else self.what


@dataclass
class PeerProof:
    peer_id: str
    address: str | None
    verified_rounds: int
    judged_rounds: int
    rebuilt_tokens: int
    recorded_tokens: int | None  # None: no CONTRIBUTION entry
    rebuilt_reward: int | None = None  # None: no pool (rewards go per address; a wallet of several peers repeats)
    recorded_reward: int | None = None
    paid: int = 0  # in committed payouts
    due: int = 0  # recorded due (local backend)


@dataclass
class ProofReport:
    session_id: str
    entries: int = 0
    signers: list[str] = field(default_factory=list)
    by_verdicts: bool = False  # False: settled by progress records, which the ledger does not hold
    settled: bool = False  # False: no contribution entry yet (a running session, or its challenge window)
    rounds: int = 0
    verified_rounds: int = 0
    pool: int | None = None
    asset: str | None = None
    paid: int = 0
    due: int = 0
    peers: list[PeerProof] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok, "problems": [asdict(p) | {"text": str(p)} for p in self.problems]}


def session_entries(db: Session, session_id: str) -> list[Entry]:
    return [Entry.of_row(row) for row in db.scalars(select(LedgerEntryRow).where(
        LedgerEntryRow.session_id == session_id).order_by(LedgerEntryRow.seq))]


def batch_transfers(db: Session, session_id: str) -> dict[int, list[tuple[str, int]]]:
    """Batch id → (recipient, amount) of each aptos batch's signed `batch_transfer`, decoded from its bytes."""
    found = {}
    for batch in db.scalars(select(PayoutBatchRow).where(PayoutBatchRow.session_id == session_id,
                                                         PayoutBatchRow.backend == "aptos")):
        if batch.signed_txn:
            try:
                found[batch.id] = aptos_tx.decode_batch_args(aptos_tx.from_hex(batch.signed_txn).transaction.payload)
            except Exception:
                found[batch.id] = []
    return found


def verify_session_db(db: Session, session_id: str, trusted: set[str]) -> ProofReport:
    """The proof of `session_id` from the server's database: its entries, each linked to the entry before it in
    the whole ledger, and the signed batch transfers of its aptos payouts."""
    entries = session_entries(db, session_id)
    before = {seq - 1 for seq in (e.seq for e in entries)}
    linked = select(LedgerEntryRow).where(LedgerEntryRow.seq.in_(before))
    previous = {row.seq: row.entry_hash for row in db.scalars(linked)}
    return verify_session(entries, session_id, trusted, previous, batch_transfers(db, session_id))


def verify_session(entries: Sequence[Entry], session_id: str, trusted: set[str] | None = None,
                   previous: Mapping[int, str] | None = None,
                   transfers: Mapping[int, list[tuple[str, int]]] | None = None) -> ProofReport:
    """Rebuild `session_id` from its entries. `trusted`: the platform keys (None: whichever single key signed
    them all; the report lists it, to compare with the platform's published key). `previous`: seq → entry_hash
    of entries of other sessions, for the links. `transfers`: batch id → its signed batch_transfer's pairs."""
    report = ProofReport(session_id=session_id, entries=len(entries))
    report.signers = sorted({e.signer for e in entries})
    if trusted is None:
        trusted = set(report.signers) if len(report.signers) == 1 else set()
    hashes = dict(previous or {}) | {e.seq: e.entry_hash for e in entries}
    bodies: list[tuple[Entry, dict[str, Any]]] = []
    for e in entries:
        where = f"ledger entry {e.seq} ({e.kind})"
        for what in entry_problems(e, trusted, where):
            report.problems.append(Problem(e.seq, e.kind, what.removeprefix(where + " ").removeprefix(where)))
        if e.seq - 1 in hashes and e.prev_hash != hashes[e.seq - 1] or e.seq == 1 and e.prev_hash != GENESIS_PREV:
            report.problems.append(Problem(e.seq, e.kind, "does not link to the entry before it (prev_hash differs)"))
        if e.session_id != session_id:
            report.problems.append(Problem(e.seq, e.kind, f"belongs to session {e.session_id}"))
            continue
        try:
            body = json.loads(e.body)
        except ValueError:
            report.problems.append(Problem(e.seq, e.kind, "its body is not JSON"))
            continue
        if isinstance(body, dict):
            bodies.append((e, body))
    _rebuild(report, bodies, transfers or {})
    return report


# ---- the rebuild ------------------------------------------------------------------------------------------
def _rebuild(report: ProofReport, bodies: list[tuple[Entry, dict[str, Any]]],
             transfers: Mapping[int, list[tuple[str, int]]]) -> None:
    of_kind: dict[str, list[tuple[Entry, dict[str, Any]]]] = defaultdict(list)
    for e, body in bodies:
        of_kind[e.kind].append((e, body))
    rows, params = _verdicts(report, of_kind[LedgerKind.VERDICT])
    recorded = {str(body.get("peer_id")): (e, body) for e, body in of_kind[LedgerKind.CONTRIBUTION]}
    report.by_verdicts = bool(of_kind[LedgerKind.VERDICT])
    report.settled = bool(recorded)
    if report.by_verdicts:
        contributions = _contributions(report, rows, params, recorded, of_kind[LedgerKind.VERDICT][-1][0])
    else:  # settled by progress records, which the ledger does not hold: its contributions are taken as recorded
        contributions = [c for c in (_recorded_contribution(report, e, body) for e, body in recorded.values()) if c]
    rewards = _rewards(report, of_kind[LedgerKind.REWARD_POOL], of_kind[LedgerKind.REWARD], contributions)
    paid, due = _payouts(report, of_kind[LedgerKind.PAYOUT], rewards, transfers)
    verified: dict[str, int] = defaultdict(int)
    judged: dict[str, int] = defaultdict(int)
    for row in rows:
        judged[row.peer_id] += 1
        verified[row.peer_id] += row.reason == Reason.VERIFIED
    report.rounds = len({row.round for row in rows})
    report.verified_rounds = sum(verified.values())
    report.paid, report.due = sum(paid.values()), sum(due.values())
    recorded_rewards = {str(b.get("address")): b.get("amount") for _, b in of_kind[LedgerKind.REWARD]}
    for c in contributions:
        r = recorded.get(c.peer_id)
        report.peers.append(PeerProof(
            peer_id=c.peer_id, address=c.address, verified_rounds=verified[c.peer_id], judged_rounds=judged[c.peer_id],
            rebuilt_tokens=c.tokens, recorded_tokens=None if r is None else r[1].get("tokens"),
            rebuilt_reward=None if rewards is None or not c.address else rewards.get(c.address, 0),
            recorded_reward=recorded_rewards.get(c.address or ""),
            paid=paid.get(c.address or "", 0), due=due.get(c.address or "", 0),
        ))


def _verdicts(report: ProofReport, entries: list[tuple[Entry, dict[str, Any]]]
              ) -> tuple[list[RoundVerdictRow], VerifyParams | None]:
    """The verdicts of every VERDICT entry, each checked against its evidence; the session's params."""
    rows: list[RoundVerdictRow] = []
    params: VerifyParams | None = None
    seen_rounds: set[int] = set()
    for e, body in entries:
        def problem(what: str, e: Entry = e) -> None:
            report.problems.append(Problem(e.seq, e.kind, what))

        round_ = body.get("round")
        if not isinstance(round_, int) or round_ in seen_rounds:
            problem(f"round {round_!r} is not a round, or was judged before")
            continue
        seen_rounds.add(round_)
        drawn = DrawnFrom.of(body)
        for why in drawn.malformed:
            problem(f"malformed evidence: {why}")
        if drawn.params is not None:
            if params is not None and drawn.params != params:
                problem("its verification params differ from an earlier round's")
            params = params or drawn.params
        verdicts = []
        for value in body.get("verdicts") or []:
            try:
                verdicts.append(Verdict.parse({**value, "session_id": body.get("session_id"), "round": round_}))
            except (BadRecord, TypeError) as exc:
                problem(f"a malformed verdict ({exc})")
        members = {v.peer_id for v in verdicts}
        for v in verdicts:
            if drawn.complete:
                for what in _reason_problems(v, drawn, members):
                    problem(f"peer {v.peer_id}: {what}")
            rows.append(RoundVerdictRow(session_id=v.session_id, round=v.round, peer_id=v.peer_id, reason=str(v.reason),
                                        detail=v.detail, scores=dict(v.scores), tokens=v.tokens,
                                        validator=str(body.get("validator", "")), ledger_seq=e.seq))
        if not drawn.complete:
            problem("it does not hold what its verdicts were drawn from (deadline, base_hash, params): they cannot "
                    "be checked")
    return rows, params


def _screen(peer: str, v: Verdict, drawn: DrawnFrom, members: set[str]) -> tuple[Reason | None, Commitment | None, str]:
    """The reason the checks made on the evidence alone give (no_commit, late, not_in_group, duplicate_update:
    an exact copy of an earlier commitment), with why; None when the peer passed them."""
    assert drawn.params is not None
    c = drawn.commitments.get(peer)
    if c is None or (c.peer_id, c.session_id, c.round, c.base_hash) != (peer, v.session_id, v.round, drawn.base_hash):
        return Reason.NO_COMMIT, None, "no valid commitment of this peer for this round and base"
    if drawn.deadline is not None and c.committed_at > drawn.deadline:
        return Reason.LATE, c, f"committed at {c.committed_at}, after the deadline {drawn.deadline}"
    vouching = [signer for signer, r in drawn.receipts.items()
                if signer != peer and signer in members and r.session_id == v.session_id
                and r.round == v.round and r.members.get(peer) == c.update_hash]
    if len(vouching) < drawn.params.receipt_quorum:
        return Reason.NOT_IN_GROUP, c, f"{len(vouching)} receipt(s) of other members name its committed update"
    earlier = sorted((other.committed_at, name) for name, other in drawn.commitments.items()
                     if name != peer and name in members and other.update_hash == c.update_hash
                     and other.committed_at < c.committed_at)
    if earlier:
        return Reason.DUPLICATE_UPDATE, c, f"peer {earlier[0][1]} committed the same update before it"
    return None, c, ""


OWN_DATA_SCORES = ("own_drop", "own_data")


def own_data_passes(scores: Mapping[str, float], params: VerifyParams) -> bool:
    """The validator's own-data rule (core/validation.py RoundJudge._passes) on a verdict's recorded scores."""
    own, own_data, z = scores.get("own_drop"), scores.get("own_data"), scores.get("own_data_z")
    if own is None or own_data is None:
        return False
    return own > 0 and own_data > params.own_data_margin and (z is None or z >= params.own_data_z)


def _reason_problems(v: Verdict, drawn: DrawnFrom, members: set[str]) -> list[str]:
    """A member not drawn for the round's audit is verified on its commitment and receipts alone (no own-data
    scores); an audited one by its scores too. Spot checks, non-finite updates and downloads cannot be redone
    from the ledger: those reasons only need a commitment that passed the checks above."""
    assert drawn.params is not None
    screened, c, why = _screen(v.peer_id, v, drawn, members)
    audited = any(k in v.scores for k in OWN_DATA_SCORES)
    problems = []
    needs_update = v.reason in (Reason.NON_FINITE, Reason.SPOT_CHECK_FAIL, Reason.LATE)
    if screened in (Reason.NOT_IN_GROUP, Reason.DUPLICATE_UPDATE) and needs_update:
        pass  # the judge checks an audited update before the receipts: what needs the update cannot be redone here
    elif screened is not None and v.reason != screened:
        problems.append(f"reason {v.reason} but the evidence says {screened} ({why})")
    elif screened is None and v.reason in (Reason.NO_COMMIT, Reason.NOT_IN_GROUP, Reason.DUPLICATE_UPDATE) \
            and not (v.reason == Reason.DUPLICATE_UPDATE and audited):  # a near copy is judged on its losses
        problems.append(f"reason {v.reason} but it committed on time, {drawn.params.receipt_quorum} receipt(s) of "
                        "other members name its update, and no member committed the same update before it")
    elif screened is None and v.reason == Reason.VERIFIED and audited and not own_data_passes(v.scores,
                                                                                                drawn.params):
        problems.append(f"verified, but its scores {dict(v.scores)} fail the own-data rule")
    elif screened is None and v.reason == Reason.OWN_DATA_FAIL and (not audited
                                                                     or own_data_passes(v.scores, drawn.params)):
        problems.append(f"own_data_fail, but its scores {dict(v.scores)} "
                        + ("pass the own-data rule" if audited else "hold no own-data measurement"))
    if v.reason == Reason.VERIFIED and c is not None:
        worth = round_tokens(c, drawn.params.batch_size, drawn.params.seq_length)
        if c.inner_steps > drawn.params.inner_steps or v.tokens != worth:
            problems.append(f"tokens {v.tokens} but its committed {c.inner_steps} inner step(s) are worth {worth} "
                            f"(at most {drawn.params.inner_steps} per round)")
    elif v.reason != Reason.VERIFIED and v.tokens != 0:
        problems.append(f"tokens {v.tokens} for a round that was not verified")
    return problems


def _recorded_contribution(report: ProofReport, e: Entry, body: dict[str, Any]) -> Contribution | None:
    try:
        return Contribution(**{k: body[k] for k in Contribution.__dataclass_fields__})
    except (KeyError, TypeError):
        report.problems.append(Problem(e.seq, e.kind, "not a contribution"))
        return None


def _contributions(report: ProofReport, rows: list[RoundVerdictRow], params: VerifyParams | None,
                   recorded: dict[str, tuple[Entry, dict[str, Any]]], last_verdict: Entry) -> list[Contribution]:
    """Settlement's own function on the rebuilt verdicts, compared with the CONTRIBUTION entries."""
    session_id = report.session_id
    # what the ledger holds about each peer beyond its verdicts: its proven wallet, device and speed
    described = [PeerProgress(peer_id=peer, session_id=session_id, step=0, outer_step=0,
                              tokens_per_second=float(body.get("tokens_per_second") or 0.0), samples=0, tokens=0,
                              wallet=body.get("address"), device=str(body.get("device") or ""))
                 for peer, (_, body) in recorded.items()]
    bound = {peer: str(body["address"]) for peer, (_, body) in recorded.items() if body.get("address")}
    limits = Limits(tokens_per_outer_round=params.tokens_per_round, seq_length=params.seq_length) if params \
        else Limits()
    rebuilt = verdict_contributions(session_id, rows, described, limits, bound)
    for c in rebuilt:
        found = recorded.get(c.peer_id)
        if found is None:
            if c.tokens and recorded:  # settled without it (before settlement, nobody has an entry)
                report.problems.append(Problem(last_verdict.seq, last_verdict.kind, f"peer {c.peer_id} earned "
                                               f"{c.tokens} tokens but has no contribution entry"))
            continue
        e, body = found
        differ = [f"{k} {json.dumps(body.get(k))} (rebuilt: {json.dumps(getattr(c, k))})" for k in COMPARED
                  if body.get(k) != getattr(c, k)]
        if differ:
            report.problems.append(Problem(e.seq, e.kind, f"peer {c.peer_id}: " + "; ".join(differ)))
    return rebuilt


Bodies = list[tuple[Entry, dict[str, Any]]]


def _rewards(report: ProofReport, pools: Bodies, recorded: Bodies,
             contributions: Iterable[Contribution]) -> dict[str, int] | None:
    """split_pool of the pool over the rebuilt contributions, compared with the REWARD entries."""
    if not pools:
        for e, _ in recorded:
            report.problems.append(Problem(e.seq, e.kind, "a reward in a session without a reward pool"))
        return None
    pool_entry, pool = pools[0]
    for e, _ in pools[1:]:
        report.problems.append(Problem(e.seq, e.kind, "a second reward pool"))
    amount = pool.get("amount")
    if not isinstance(amount, int) or amount < 0:
        report.problems.append(Problem(pool_entry.seq, pool_entry.kind, f"pool amount {amount!r} is not an amount"))
        return None
    report.pool, report.asset = amount, str(pool.get("asset"))
    rebuilt = split_pool(amount, weights(contributions))
    if not recorded:
        return rebuilt  # not settled yet
    left = dict(rebuilt)
    for e, body in recorded:
        address = str(body.get("address"))
        should = left.pop(address, None)
        if should is None:
            report.problems.append(Problem(e.seq, e.kind, f"a reward of {body.get('amount')} to {address}, who earned "
                                                          "none"))
        elif body.get("amount") != should or body.get("asset") != report.asset:
            report.problems.append(Problem(e.seq, e.kind, f"reward of {address}: {body.get('amount')} "
                                                          f"{body.get('asset')} (rebuilt: {should} {report.asset})"))
    last = recorded[-1][0]
    for address, should in left.items():
        report.problems.append(Problem(last.seq, last.kind, f"{address} earned {should} but has no reward entry"))
    return rebuilt


def _payouts(report: ProofReport, entries: list[tuple[Entry, dict[str, Any]]], rewards: dict[str, int] | None,
             transfers: Mapping[int, list[tuple[str, int]]]) -> tuple[dict[str, int], dict[str, int]]:
    """Every payout recorded due or committed pays its address exactly its reward, and nobody is paid twice."""
    paid: dict[str, int] = {}
    due: dict[str, int] = {}
    for e, body in entries:
        status = body.get("status")
        if status not in (BatchStatus.DUE, BatchStatus.COMMITTED):
            continue  # failed or superseded: its payouts became due again
        recipients = [(str(a), n) for a, n in body.get("recipients") or []]
        for address, amount in recipients:
            should = (rewards or {}).get(address)
            if amount != should:
                report.problems.append(Problem(e.seq, e.kind, f"pays {address} {amount} (its reward: {should})"))
            if status == BatchStatus.COMMITTED:
                if address in paid:
                    report.problems.append(Problem(e.seq, e.kind, f"pays {address} a second time"))
                paid[address] = paid.get(address, 0) + amount
            else:
                due[address] = amount
        batch = body.get("batch_id")
        if body.get("backend") == "aptos" and isinstance(batch, int) and batch in transfers \
                and sorted(transfers[batch]) != sorted(recipients):
            report.problems.append(Problem(e.seq, e.kind, f"its signed batch_transfer pays {transfers[batch]}, "
                                                          f"not the recorded {recipients}"))
    for address in paid:
        due.pop(address, None)
    return paid, due
