"""The chain's tables, declared on `cotrain.db.Base` (migrations: db/migrations/versions/*_chain_*.py), and
the status values their rows hold (StrEnums, stored as their strings).

Times are epoch seconds (float), like the server's tables. Amounts are integers in the asset's smallest
unit (octas for APT). Rows that carry a `ledger_seq` are copies of a signed ledger entry; `cotrain ledger
verify` checks both the chain of entries and that every such row still equals its entry.
"""

from __future__ import annotations

from dataclasses import fields
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cotrain.db import Base
from cotrain.p2p.progress import PeerProgress

ADDRESS = 66  # 0x + 64 hex digits


class ContributionStatus(StrEnum):
    VERIFIED = "verified"
    EXCLUDED = "excluded"  # its `reason` says why


class PayoutStatus(StrEnum):
    """What one address is owed for one session (`chain_payouts.status`)."""

    NONE = "none"  # read views only: a reward of 0 has no payout row
    DUE = "due"
    PENDING = "pending"  # in a submitted transaction that the chain has not settled yet
    PAID = "paid"
    FAILED = "failed"


class BatchStatus(StrEnum):
    """One payout transaction (`chain_payout_batches.status`)."""

    DUE = "due"  # local backend: recorded as due, nothing sent
    PENDING = "pending"
    COMMITTED = "committed"
    FAILED = "failed"  # executed and failed on chain: its payouts are due again
    SUPERSEDED = "superseded"  # another transaction used its sequence number: its payouts are due again


class BindingProof(StrEnum):
    PEER_AND_WALLET = "peer_and_wallet"  # the peer's key signed (session, wallet), the wallet (session, peer)
    SIGNATURE = "signature"  # the wallet alone signed: written before c0003 (which deletes such rows) only


class LedgerKind(StrEnum):
    REWARD_POOL = "reward_pool"
    CONTRIBUTION = "contribution"
    REWARD = "reward"
    PAYOUT = "payout"
    VERDICT = "verdict"  # one entry per judged round: the validator's verdicts on every member (chain/verdicts.py)


class ChainUser(Base):
    """One per wallet address that signed in; session owners and contributors are addresses."""

    __tablename__ = "chain_users"
    address: Mapped[str] = mapped_column(String(ADDRESS), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(ADDRESS))
    created_at: Mapped[float] = mapped_column(Float)
    last_login_at: Mapped[float] = mapped_column(Float)


class ChainNonce(Base):
    """A sign-in nonce: issued for one address, valid 5 minutes, used at most once."""

    __tablename__ = "chain_nonces"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(ADDRESS))
    application: Mapped[str] = mapped_column(String(300))
    chain_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class LedgerEntryRow(Base):
    """One append-only ledger entry: hash of the previous entry, own hash, platform signature."""

    __tablename__ = "chain_ledger"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(Text)  # canonical JSON
    created_at: Mapped[float] = mapped_column(Float)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)
    signer: Mapped[str] = mapped_column(String(ADDRESS))
    signature: Mapped[str] = mapped_column(String(130))


class PeerBinding(Base):
    """A session's peer bound to a wallet address, with how it was proven."""

    __tablename__ = "chain_peer_bindings"
    __table_args__ = (UniqueConstraint("session_id", "peer_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    peer_id: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(ADDRESS), index=True)
    proof: Mapped[str] = mapped_column(String(16))  # a BindingProof
    created_at: Mapped[float] = mapped_column(Float)
    # both halves of a PEER_AND_WALLET proof, kept so that anyone can check the binding again later
    peer_public_key: Mapped[str | None] = mapped_column(Text, nullable=True)  # OpenSSH RSA text
    peer_signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    wallet_public_key: Mapped[str | None] = mapped_column(String(140), nullable=True)
    wallet_signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # what a browser wallet signed (the wallet-standard full message); None when it signed the bare statement
    wallet_full_message: Mapped[str | None] = mapped_column(Text, nullable=True)


class ProgressSnapshot(Base):
    """The last DHT progress record (`PeerProgress`) seen per peer and outer step: records expire from the
    DHT within seconds, so the server keeps their counters while the session runs. Its columns are
    `KEPT_FIELDS`, the subset of PeerProgress's fields that contributions are tallied from."""

    __tablename__ = "chain_progress"
    __table_args__ = (UniqueConstraint("session_id", "peer_id", "outer_step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    peer_id: Mapped[str] = mapped_column(String(200))
    outer_step: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    tokens_per_second: Mapped[float] = mapped_column(Float)
    wallet: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str] = mapped_column(String(200))
    updated: Mapped[float] = mapped_column(Float)

    @classmethod
    def of(cls, record: PeerProgress) -> ProgressSnapshot:
        return cls(**{name: getattr(record, name) for name in KEPT_FIELDS})

    def keep(self, record: PeerProgress) -> None:
        """Take the newer counters of the same peer and outer step."""
        for name in KEPT_FIELDS:
            setattr(self, name, getattr(record, name))

    def as_progress(self) -> PeerProgress:
        return PeerProgress(**{name: getattr(self, name) for name in KEPT_FIELDS})


KEPT_FIELDS = tuple(f.name for f in fields(PeerProgress) if f.name in ProgressSnapshot.__table__.columns)


class ContributionRow(Base):
    __tablename__ = "chain_contributions"
    __table_args__ = (UniqueConstraint("session_id", "peer_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    peer_id: Mapped[str] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(ADDRESS), nullable=True, index=True)
    samples: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    outer_rounds: Mapped[int] = mapped_column(Integer)
    compute_seconds: Mapped[float] = mapped_column(Float)
    tokens_per_second: Mapped[float] = mapped_column(Float)
    device: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # a ContributionStatus
    reason: Mapped[str] = mapped_column(Text)
    ledger_seq: Mapped[int] = mapped_column(ForeignKey("chain_ledger.seq"))


class RoundVerdictRow(Base):
    """A validator's verdict on one peer's DiLoCo round (cotrain.p2p.verification.Verdict), copied from the
    VERDICT ledger entry of its round. A session that has any is paid by its VERIFIED rows' `tokens` only."""

    __tablename__ = "chain_round_verdicts"
    __table_args__ = (UniqueConstraint("session_id", "round", "peer_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    round: Mapped[int] = mapped_column(Integer)
    peer_id: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(32))  # a cotrain.p2p.verification.Reason
    detail: Mapped[str] = mapped_column(Text)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    tokens: Mapped[int] = mapped_column(BigInteger)
    validator: Mapped[str] = mapped_column(String(200))
    ledger_seq: Mapped[int] = mapped_column(ForeignKey("chain_ledger.seq"))


class RewardPoolRow(Base):
    """A session's reward pool, set when the session is created."""

    __tablename__ = "chain_reward_pools"
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(200))
    ledger_seq: Mapped[int] = mapped_column(ForeignKey("chain_ledger.seq"))


class RewardRow(Base):
    __tablename__ = "chain_rewards"
    __table_args__ = (UniqueConstraint("session_id", "address"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(ADDRESS), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(200))
    ledger_seq: Mapped[int] = mapped_column(ForeignKey("chain_ledger.seq"))


class PayoutBatchRow(Base):
    """One payout transaction. For the aptos backend it is written (status pending, with its sequence
    number and the signed bytes) before it is submitted, so a crash never loses or repeats it."""

    __tablename__ = "chain_payout_batches"
    __table_args__ = (UniqueConstraint("sender", "sequence_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    backend: Mapped[str] = mapped_column(String(16))
    asset: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # a BatchStatus
    sender: Mapped[str | None] = mapped_column(String(ADDRESS), nullable=True)
    sequence_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    signed_txn: Mapped[str | None] = mapped_column(Text, nullable=True)  # hex BCS SignedTransaction
    tx_hash: Mapped[str | None] = mapped_column(String(ADDRESS), nullable=True)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    vm_status: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PayoutRow(Base):
    """What one address is owed for one session, and in which batch it is paid."""

    __tablename__ = "chain_payouts"
    __table_args__ = (UniqueConstraint("session_id", "address"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(ADDRESS), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(200))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("chain_payout_batches.id"), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # a PayoutStatus
    tx_hash: Mapped[str | None] = mapped_column(String(ADDRESS), nullable=True)


CHAIN_TABLES = [
    ChainUser.__table__,
    ChainNonce.__table__,
    LedgerEntryRow.__table__,
    PeerBinding.__table__,
    ProgressSnapshot.__table__,
    ContributionRow.__table__,
    RoundVerdictRow.__table__,
    RewardPoolRow.__table__,
    RewardRow.__table__,
    PayoutBatchRow.__table__,
    PayoutRow.__table__,
]
