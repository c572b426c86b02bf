"""The trust boundary: roles instead of an admin flag, wallet-token revocation, worker memory for
the capacity check, and the hash-chained audit log.

Revision ID: 0005_trust_boundary
Revises: 0004_remote_files
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_trust_boundary"
down_revision = "0004_remote_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default="member"))
        batch_op.add_column(sa.Column("tokens_valid_after", sa.Float(), nullable=True))
    op.execute("UPDATE api_tokens SET role = 'admin' WHERE is_admin")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("is_admin")
    op.create_table(
        "revoked_tokens",
        sa.Column("token_id", sa.String(length=64), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("memory_bytes", sa.BigInteger(), nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False, unique=True),
    )
    for column in ("time", "actor", "action", "target"):
        op.create_index(f"ix_audit_log_{column}", "audit_log", [column])


def downgrade() -> None:
    op.drop_table("audit_log")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("memory_bytes")
    op.drop_table("revoked_tokens")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE api_tokens SET is_admin = (role = 'admin')")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("role")
        batch_op.drop_column("tokens_valid_after")
