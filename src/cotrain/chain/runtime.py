"""Chain-level wiring for the server and the CLI: the platform ledger, and the configured payout backend.
(The database is opened with `cotrain.db.open_database`, like every other process.)"""

from __future__ import annotations

import asyncio

from aptos_sdk import ed25519
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.keys import KeyConfigError, key_settings, load_ledger_key, load_treasury_account
from cotrain.chain.ledger import Ledger
from cotrain.chain.payouts import AptosPayouts, PayoutAudit, PayoutReport, record_due_locally
from cotrain.chain.settings import ChainSettings


def platform_ledger(create_key: bool = True) -> Ledger:
    """The ledger signed with the platform key. After a key rotation, list the old public keys (hex, comma
    separated) in COTRAIN_LEDGER_TRUSTED_KEYS so older entries still verify."""
    key = load_ledger_key(create=create_key)
    old = key_settings().ledger_trusted_keys
    try:
        trusted = [key.public_key(), *(ed25519.PublicKey.from_str(k) for k in old)]
    except Exception:
        raise KeyConfigError("COTRAIN_LEDGER_TRUSTED_KEYS must list 32-byte Ed25519 public keys in hex, "
                             "separated by commas.") from None
    return Ledger(key, trusted)


async def run_payouts(factory: sessionmaker[Session], ledger: Ledger, settings: ChainSettings,
                      audit: PayoutAudit) -> PayoutReport:
    """Pay (aptos) or record as due (local) every payout due, per COTRAIN_PAYOUT_BACKEND. The database steps
    run in threads, so the caller's event loop is never blocked."""
    if settings.payout_backend == "local":
        return await asyncio.to_thread(record_due_locally, factory, ledger, audit)
    assert settings.node_url is not None
    treasury = await asyncio.to_thread(load_treasury_account)
    payer = AptosPayouts(factory, ledger, settings.node_url, treasury, audit, chain_id=settings.chain_id)
    return await payer.run()
