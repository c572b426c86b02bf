"""chain_peer_bindings.wallet_full_message: a browser wallet signs the wallet's half of a binding inside a
wallet-standard full message (APTOS, address:, application:, chainId:, message:, nonce:); the text is kept with
the signature so that the binding can be checked again later.

Revision ID: c0005_binding_wallet_message
Revises: c0004_chain_round_verdicts
"""

import sqlalchemy as sa
from alembic import op

revision = "c0005_binding_wallet_message"
down_revision = "c0004_chain_round_verdicts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chain_peer_bindings") as table:
        table.add_column(sa.Column("wallet_full_message", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chain_peer_bindings") as table:
        table.drop_column("wallet_full_message")
