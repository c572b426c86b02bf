"""Wiring for the CLI and the server: the database, the platform ledger, and the configured payout backend."""

from __future__ import annotations

import os

from aptos_sdk import ed25519
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.keys import KeyConfigError, load_ledger_key, load_treasury_account
from cotrain.chain.ledger import Ledger
from cotrain.chain.payouts import AptosPayouts, PayoutReport, record_due_locally
from cotrain.chain.settings import ChainSettings
from cotrain.paths import cotrain_home


def database_url() -> str:
    """The server's database: DATABASE_URL, else the SQLite file under COTRAIN_HOME (as the server uses)."""
    from cotrain.db import sqlite_url

    return os.environ.get("DATABASE_URL") or sqlite_url(cotrain_home() / "cotrain.db")


def open_database(url: str | None = None, migrate: bool = True) -> sessionmaker[Session]:
    from cotrain.db import make_db_factory, make_engine, run_migrations

    engine = make_engine(url or database_url())
    if migrate:
        run_migrations(engine)
    return make_db_factory(engine)


def platform_ledger(create_key: bool = True) -> Ledger:
    """The ledger signed with the platform key. After a key rotation, list the old public keys (hex, comma
    separated) in COTRAIN_LEDGER_TRUSTED_KEYS so older entries still verify."""
    key = load_ledger_key(create=create_key)
    old = [k.strip() for k in os.environ.get("COTRAIN_LEDGER_TRUSTED_KEYS", "").split(",") if k.strip()]
    try:
        trusted = [key.public_key(), *(ed25519.PublicKey.from_str(k) for k in old)]
    except Exception:
        raise KeyConfigError("COTRAIN_LEDGER_TRUSTED_KEYS must list 32-byte Ed25519 public keys in hex, "
                             "separated by commas.") from None
    return Ledger(key, trusted)


async def run_payouts(factory: sessionmaker[Session], ledger: Ledger, settings: ChainSettings) -> PayoutReport:
    """Pay (aptos) or record as due (local) every payout due, per COTRAIN_PAYOUT_BACKEND."""
    if settings.payout_backend == "local":
        return record_due_locally(factory, ledger)
    assert settings.node_url is not None
    payer = AptosPayouts(factory, ledger, settings.node_url, load_treasury_account(), chain_id=settings.chain_id)
    return await payer.run()
