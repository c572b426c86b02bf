"""workers: each executor's capacity and heartbeat (why a queued session waits); an index on
session_messages.time (the "*" WebSocket replay of sessions a client never heard of).

Revision ID: 0003_workers
Revises: 0002_metric_participants
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_workers"
down_revision = "0002_metric_participants"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("cpu_slots", sa.Integer(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_session_messages_time", "session_messages", ["time"])


def downgrade() -> None:
    op.drop_index("ix_session_messages_time", table_name="session_messages")
    op.drop_table("workers")
