"""chain_peer_bindings: a binding needs the peer's and the wallet's signatures, and keeps both.

Rows proven the old ways (the wallet's signature alone, or the signed-in owner binding a peer to itself)
say nothing about who holds the peer, so they are deleted: such a peer is paid again once it is bound with
both signatures (`cotrain join --wallet-key-file`, `cotrain rewards bind --peer-key-file`).

Revision ID: c0003_chain_binding_signatures
Revises: c0002_chain_progress
"""

import sqlalchemy as sa
from alembic import op

revision = "c0003_chain_binding_signatures"
down_revision = "c0002_chain_progress"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM chain_peer_bindings WHERE proof <> 'peer_and_wallet'")
    with op.batch_alter_table("chain_peer_bindings") as table:
        table.add_column(sa.Column("peer_public_key", sa.Text(), nullable=True))
        table.add_column(sa.Column("peer_signature", sa.Text(), nullable=True))
        table.add_column(sa.Column("wallet_public_key", sa.String(140), nullable=True))
        table.add_column(sa.Column("wallet_signature", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chain_peer_bindings") as table:
        for column in ("wallet_signature", "wallet_public_key", "peer_signature", "peer_public_key"):
            table.drop_column(column)
