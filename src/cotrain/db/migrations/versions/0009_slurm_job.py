"""training_sessions.job_id and job_reason (issue 15): the Slurm job a session runs as, so a restarted
Slurm worker re-attaches to it, and Slurm's reason while it is pending (the session's waiting reason).

Revision ID: 0009_slurm_job
Revises: 0008_validator_peer_id
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_slurm_job"
down_revision = "0008_validator_peer_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_sessions", sa.Column("job_id", sa.String(length=64), nullable=True))
    op.add_column("training_sessions", sa.Column("job_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # not batch mode: on SQLite that copies the table, and dropping the old copy would cascade to its children
    op.drop_column("training_sessions", "job_reason")  # SQLite >= 3.35 drops a column in place
    op.drop_column("training_sessions", "job_id")
