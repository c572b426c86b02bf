"""session_log_tails: the rolling tail of each run's logs, kept by its worker; model_versions.worker_id:
whose disk a version's files are on (so other machines can say where, rather than "gone").

Revision ID: 0004_remote_files
Revises: 0003_workers
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_remote_files"
down_revision = "0003_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_log_tails",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=8), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["training_sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("session_id", "stream"),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("worker_id")
    op.drop_table("session_log_tails")
