"""Revision c0003 on a database with bindings proven the old ways: they say nothing about who holds the
peer, so they are deleted (the peer is paid again once bound with both signatures); a two-signature row stays."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from cotrain.db import MIGRATIONS_DIR, make_engine, run_migrations


def test_old_bindings_are_migrated_out(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "c0002_chain_progress")
        for peer, proof in (("by-owner", "owner"), ("by-wallet", "signature"), ("by-both", "peer_and_wallet")):
            connection.execute(text("INSERT INTO chain_peer_bindings (session_id, peer_id, address, proof, created_at) "
                                    "VALUES ('s', :peer, '0x1', :proof, 0)"), {"peer": peer, "proof": proof})
    run_migrations(engine)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT peer_id, proof, peer_signature FROM chain_peer_bindings")).all()
    assert [tuple(r) for r in rows] == [("by-both", "peer_and_wallet", None)]
    engine.dispose()
