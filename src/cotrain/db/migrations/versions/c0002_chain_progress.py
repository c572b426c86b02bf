"""chain_progress: the last DHT progress record per peer and outer step, kept while a session runs.

Revision ID: c0002_chain_progress
Revises: c0001_chain_tables
"""

import sqlalchemy as sa
from alembic import op

revision = "c0002_chain_progress"
down_revision = "c0001_chain_tables"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_progress",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("peer_id", sa.String(200), nullable=False),
        sa.Column("outer_step", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("tokens_per_second", sa.Float(), nullable=False),
        sa.Column("wallet", sa.String(200), nullable=True),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.UniqueConstraint("session_id", "peer_id", "outer_step"),
    )
    op.create_index("ix_chain_progress_session_id", "chain_progress", ["session_id"])


def downgrade() -> None:
    op.drop_table("chain_progress")
