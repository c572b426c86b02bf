"""chain_round_verdicts: a validator's verdict on each peer's DiLoCo round, copied from its round's VERDICT
ledger entry. A session with verdicts is paid by its verified rounds only.

Revision ID: c0004_chain_round_verdicts
Revises: c0003_chain_binding_signatures
"""

import sqlalchemy as sa
from alembic import op

revision = "c0004_chain_round_verdicts"
down_revision = "c0003_chain_binding_signatures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_round_verdicts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("peer_id", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("validator", sa.String(200), nullable=False),
        sa.Column("ledger_seq", sa.Integer(), sa.ForeignKey("chain_ledger.seq"), nullable=False),
        sa.UniqueConstraint("session_id", "round", "peer_id"),
    )
    op.create_index("ix_chain_round_verdicts_session_id", "chain_round_verdicts", ["session_id"])


def downgrade() -> None:
    op.drop_table("chain_round_verdicts")
