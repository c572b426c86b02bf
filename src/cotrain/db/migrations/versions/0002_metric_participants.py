"""metric_points.participants: the peers of each progress point (the participants-over-time chart).

Revision ID: 0002_metric_participants
Revises: 0001_server_initial
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_metric_participants"
down_revision = "0001_server_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("participants", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.drop_column("participants")
