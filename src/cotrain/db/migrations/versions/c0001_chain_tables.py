"""The chain's tables: wallet users, sign-in nonces, the signed ledger, peer bindings, contributions,
reward pools, rewards, payout batches and payouts (cotrain/chain/orm.py).

Revision ID: c0001_chain_tables
Revises: 0001_server_initial
"""

import sqlalchemy as sa
from alembic import op

revision = "c0001_chain_tables"
down_revision = "0001_server_initial"
branch_labels = None
depends_on = None

ADDR = 66


def upgrade() -> None:
    op.create_table(
        "chain_users",
        sa.Column("address", sa.String(ADDR), primary_key=True),
        sa.Column("public_key", sa.String(ADDR), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_login_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "chain_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(ADDR), nullable=False),
        sa.Column("application", sa.String(300), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_chain_nonces_expires_at", "chain_nonces", ["expires_at"])
    op.create_table(
        "chain_ledger",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.Column("signer", sa.String(ADDR), nullable=False),
        sa.Column("signature", sa.String(130), nullable=False),
        sa.UniqueConstraint("entry_hash"),
    )
    op.create_index("ix_chain_ledger_session_id", "chain_ledger", ["session_id"])
    op.create_table(
        "chain_peer_bindings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("peer_id", sa.String(200), nullable=False),
        sa.Column("address", sa.String(ADDR), nullable=False),
        sa.Column("proof", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("session_id", "peer_id"),
    )
    op.create_index("ix_chain_peer_bindings_session_id", "chain_peer_bindings", ["session_id"])
    op.create_index("ix_chain_peer_bindings_address", "chain_peer_bindings", ["address"])
    op.create_table(
        "chain_contributions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("peer_id", sa.String(200), nullable=False),
        sa.Column("address", sa.String(ADDR), nullable=True),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("outer_rounds", sa.Integer(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.Column("tokens_per_second", sa.Float(), nullable=False),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ledger_seq", sa.Integer(), sa.ForeignKey("chain_ledger.seq"), nullable=False),
        sa.UniqueConstraint("session_id", "peer_id"),
    )
    op.create_index("ix_chain_contributions_session_id", "chain_contributions", ["session_id"])
    op.create_index("ix_chain_contributions_address", "chain_contributions", ["address"])
    op.create_table(
        "chain_reward_pools",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("asset", sa.String(200), nullable=False),
        sa.Column("ledger_seq", sa.Integer(), sa.ForeignKey("chain_ledger.seq"), nullable=False),
    )
    op.create_table(
        "chain_rewards",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(ADDR), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("asset", sa.String(200), nullable=False),
        sa.Column("ledger_seq", sa.Integer(), sa.ForeignKey("chain_ledger.seq"), nullable=False),
        sa.UniqueConstraint("session_id", "address"),
    )
    op.create_index("ix_chain_rewards_session_id", "chain_rewards", ["session_id"])
    op.create_index("ix_chain_rewards_address", "chain_rewards", ["address"])
    op.create_table(
        "chain_payout_batches",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("asset", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(ADDR), nullable=True),
        sa.Column("sequence_number", sa.BigInteger(), nullable=True),
        sa.Column("signed_txn", sa.Text(), nullable=True),
        sa.Column("tx_hash", sa.String(ADDR), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("vm_status", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("sender", "sequence_number"),
    )
    op.create_index("ix_chain_payout_batches_session_id", "chain_payout_batches", ["session_id"])
    op.create_table(
        "chain_payouts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(ADDR), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("asset", sa.String(200), nullable=False),
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("chain_payout_batches.id"), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tx_hash", sa.String(ADDR), nullable=True),
        sa.UniqueConstraint("session_id", "address"),
    )
    op.create_index("ix_chain_payouts_session_id", "chain_payouts", ["session_id"])
    op.create_index("ix_chain_payouts_address", "chain_payouts", ["address"])


def downgrade() -> None:
    for table in ("chain_payouts", "chain_payout_batches", "chain_rewards", "chain_reward_pools",
                  "chain_contributions", "chain_peer_bindings", "chain_ledger", "chain_nonces", "chain_users"):
        op.drop_table(table)
