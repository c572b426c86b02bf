"""node_samples, round_samples, round_peer_samples (issue 19): each node's system metrics and each
DiLoCo round's breakdown (training, averaging, waiting, traffic per peer) over time, for the
Machines section, the round chart and /metrics.

Revision ID: 0007_node_samples
Revises: 0006_data_path_approval
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_node_samples"
down_revision = "0006_data_path_approval"
branch_labels = None
depends_on = None


def _session_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["session_id"], ["training_sessions.id"], ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "node_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("host_cpus", sa.Integer(), nullable=True),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("ram_used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("ram_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("process_rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("net_sent_bytes_per_s", sa.Float(), nullable=True),
        sa.Column("net_recv_bytes_per_s", sa.Float(), nullable=True),
        sa.Column("disk_read_bytes_per_s", sa.Float(), nullable=True),
        sa.Column("disk_write_bytes_per_s", sa.Float(), nullable=True),
        sa.Column("tokens_per_second", sa.Float(), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=True),
        sa.Column("gpu_util_percent", sa.Float(), nullable=True),
        sa.Column("gpu_mem_used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("gpu_mem_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("gpu_power_w", sa.Float(), nullable=True),
        sa.Column("gpu_temp_c", sa.Float(), nullable=True),
        sa.Column("gpus", sa.JSON(), nullable=True),
        _session_fk(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_node_samples_session_node_step", "node_samples", ["session_id", "node", "step"])
    op.create_table(
        "round_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("round_seconds", sa.Float(), nullable=True),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("averaging_seconds", sa.Float(), nullable=True),
        sa.Column("wait_seconds", sa.Float(), nullable=True),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=True),
        sa.Column("bytes_received", sa.BigInteger(), nullable=True),
        sa.Column("group_size", sa.Integer(), nullable=True),
        sa.Column("slowest_peer", sa.String(length=64), nullable=True),
        _session_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_id", "round", name="uq_round_samples_round"),
    )
    op.create_table(
        "round_peer_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=True),
        sa.Column("bytes_received", sa.BigInteger(), nullable=True),
        _session_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_id", "round", "peer", name="uq_round_peer_samples_peer"),
    )


def downgrade() -> None:
    op.drop_table("round_peer_samples")
    op.drop_table("round_samples")
    op.drop_index("ix_node_samples_session_node_step", table_name="node_samples")
    op.drop_table("node_samples")
