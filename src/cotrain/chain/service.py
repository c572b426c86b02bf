"""The hooks the server calls, each in the caller's DB transaction, each writing ledger entries:

* `set_reward_pool` when a session is created with a reward pool;
* `bind_peer` when a peer proves its wallet (`cotrain join --wallet`) or the signed-in owner starts it;
* `settle_session` when a session completes: contributions from the DHT progress records, then the
  pro-rata rewards and the payouts due. Calling it again for the same session changes nothing.
Payouts are then sent (or, with the local backend, recorded as due) by `payouts.run_payouts`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict

from aptos_sdk import ed25519
from aptos_sdk.account_address import AccountAddress
from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.chain.contributions import Contribution, Limits, ProgressLike, tally, weights
from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import ContributionRow, PayoutRow, PeerBinding, RewardPoolRow, RewardRow
from cotrain.chain.rewards import split_pool
from cotrain.chain.signin import derived_auth_keys


class ChainError(Exception):
    """A chain operation cannot be done as asked; the message says why and what to do."""


def set_reward_pool(db: Session, ledger: Ledger, session_id: str, amount: int, asset: str = "APT") -> RewardPoolRow:
    if amount < 0:
        raise ChainError("A reward pool must be zero or more (in the asset's smallest unit, octas for APT).")
    existing = db.get(RewardPoolRow, session_id)
    if existing is not None:
        if (existing.amount, existing.asset) != (amount, asset):
            raise ChainError(f"Session {session_id} already has a reward pool of {existing.amount} {existing.asset}; "
                             "a pool cannot be changed once set.")
        return existing
    entry = ledger.append(db, "reward_pool", session_id, {"session_id": session_id, "amount": amount, "asset": asset})
    row = RewardPoolRow(session_id=session_id, amount=amount, asset=asset, ledger_seq=entry.seq)
    db.add(row)
    db.flush()
    return row


def binding_statement(session_id: str, peer_id: str, address: str) -> bytes:
    """What a wallet signs to bind a peer to itself (`cotrain join --wallet`)."""
    return f"CoTrain peer binding\nsession: {session_id}\npeer: {peer_id}\nwallet: {address}".encode()


def sign_binding(wallet_key: ed25519.PrivateKey, session_id: str, peer_id: str) -> dict[str, str]:
    """For `cotrain join --wallet`: the body of POST /api/v1/rewards/bindings, signed with the wallet's key
    (the key stays on the volunteer's machine; only the signature is sent)."""
    public_key = wallet_key.public_key()
    address = str(AccountAddress.from_key(public_key))
    signature = wallet_key.sign(binding_statement(session_id, peer_id, address))
    return {"sessionId": session_id, "peerId": peer_id, "address": address, "publicKey": str(public_key),
            "signature": str(signature)}


def check_binding_signature(session_id: str, peer_id: str, address: str, public_key: str, signature: str) -> None:
    """Raises ChainError unless `signature` is the wallet's signature of the binding statement."""
    try:
        key = ed25519.PublicKey.from_str(public_key)
        ok = key.verify(binding_statement(session_id, peer_id, address), ed25519.Signature.from_str(signature))
        owns = AccountAddress.from_str_relaxed(address).address in derived_auth_keys(key)
    except Exception:
        ok = owns = False
    if not (ok and owns):
        raise ChainError(f"The binding of peer {peer_id} to wallet {address} is not signed by that wallet's key; "
                         "sign it again with `cotrain join --wallet` using the wallet's key.")


def bind_peer(db: Session, session_id: str, peer_id: str, address: str, proof: str) -> PeerBinding:
    """Record a proven binding ("signature": checked with check_binding_signature; "owner": the signed-in
    user who started the peer)."""
    addr = str(AccountAddress.from_str_relaxed(address))
    row = db.scalars(select(PeerBinding).where(PeerBinding.session_id == session_id,
                                               PeerBinding.peer_id == peer_id)).first()
    if row is not None:
        if row.address != addr:
            raise ChainError(f"Peer {peer_id} is already bound to {row.address} in session {session_id}.")
        return row
    row = PeerBinding(session_id=session_id, peer_id=peer_id, address=addr, proof=proof, created_at=time.time())
    db.add(row)
    db.flush()
    return row


def bound_wallets(db: Session, session_id: str) -> dict[str, str]:
    return {b.peer_id: b.address for b in db.scalars(select(PeerBinding).where(PeerBinding.session_id == session_id))}


def record_contributions(
    db: Session,
    ledger: Ledger,
    session_id: str,
    records: Iterable[ProgressLike],
    limits: Limits | None = None,
    require_binding: bool = True,
) -> list[ContributionRow]:
    existing = list(db.scalars(select(ContributionRow).where(ContributionRow.session_id == session_id)
                               .order_by(ContributionRow.peer_id)))
    if existing:
        return existing
    mine = [r for r in records if r.session_id == session_id]
    bindings = bound_wallets(db, session_id) if require_binding else None
    rows = []
    for c in tally(mine, limits, bindings):
        entry = ledger.append(db, "contribution", session_id, asdict(c))
        row = ContributionRow(**asdict(c), ledger_seq=entry.seq)
        db.add(row)
        rows.append(row)
    db.flush()
    return rows


def distribute_rewards(db: Session, ledger: Ledger, session_id: str) -> list[RewardRow]:
    existing = list(db.scalars(select(RewardRow).where(RewardRow.session_id == session_id)))
    if existing:
        return existing
    pool = db.get(RewardPoolRow, session_id)
    if pool is None:
        return []
    contributions = [Contribution(**{k: getattr(r, k) for k in Contribution.__dataclass_fields__})
                     for r in db.scalars(select(ContributionRow).where(ContributionRow.session_id == session_id))]
    rows = []
    for address, amount in sorted(split_pool(pool.amount, weights(contributions)).items()):
        body = {"session_id": session_id, "address": address, "amount": amount, "asset": pool.asset}
        entry = ledger.append(db, "reward", session_id, body)
        rows.append(RewardRow(**body, ledger_seq=entry.seq))
        if amount > 0:
            db.add(PayoutRow(session_id=session_id, address=address, amount=amount, asset=pool.asset, status="due"))
    db.add_all(rows)
    db.flush()
    return rows


def settle_session(
    db: Session,
    ledger: Ledger,
    session_id: str,
    records: Iterable[ProgressLike],
    limits: Limits | None = None,
    require_binding: bool = True,
) -> list[RewardRow]:
    """The completion hook: contributions, then rewards and payouts due. Idempotent."""
    record_contributions(db, ledger, session_id, records, limits, require_binding)
    return distribute_rewards(db, ledger, session_id)
