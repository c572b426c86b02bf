"""training_sessions.validator_peer_id (issue 12): the peer id of the server's own engine peer, which
validates a rewarded DiLoCo session; volunteers joining through the server trust its exclusions.

Revision ID: 0008_validator_peer_id
Revises: 0007_node_samples
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_validator_peer_id"
down_revision = "0007_node_samples"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_sessions", sa.Column("validator_peer_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    # not batch mode: on SQLite that copies the table, and dropping the old copy would cascade to its children
    op.drop_column("training_sessions", "validator_peer_id")  # SQLite >= 3.35 drops a column in place
