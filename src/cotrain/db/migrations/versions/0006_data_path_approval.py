"""training_sessions.data_path_approval: a maintainer's or admin's approval of a dataPath outside the
data roots ({"dataPath", "path" (resolved), "by", "role", "at"}), so the worker that runs the
session adds exactly that path to the run's roots (cotrain.core.path_guard).

Revision ID: 0006_data_path_approval
Revises: 0005_trust_boundary
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_data_path_approval"
down_revision = "0005_trust_boundary"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_path_approval", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_sessions", schema=None) as batch_op:
        batch_op.drop_column("data_path_approval")
