"""The chain's hooks in a session's life (`cotrain.chain.hooks`): a reward pool set at creation, the
peers' DHT progress records kept on every monitor tick of a running DiLoCo session (they expire from
the DHT, so they are captured while it runs), settlement when it completes, and the payouts due.

The chain is optional: when `cotrain.chain` cannot be imported or its ledger key cannot be loaded, the
server runs without rewards, and only a request that asks for a reward pool is refused.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cotrain.server.auth import TokenResolver
from cotrain.server.errors import ServiceError
from cotrain.server.p2p_node import ServerDHT

log = logging.getLogger(__name__)

WALLET_PRINCIPAL = "wallet:"  # api_tokens.name of a signed-in wallet: "wallet:0x..."


class ChainUnavailable(ServiceError):
    status_code = 503


def owner_wallet(principal_name: str | None) -> str | None:
    """The address of a wallet principal ("wallet:0x..."), or None for an API token."""
    if principal_name and principal_name.startswith(WALLET_PRINCIPAL):
        return principal_name[len(WALLET_PRINCIPAL):]
    return None


class ChainBridge:
    def __init__(self, factory: sessionmaker[Session], dht: ServerDHT):
        self.factory = factory
        self.dht = dht
        self.hooks: Any = None
        self.error: str | None = None
        self._paying: asyncio.Lock | None = None  # one payout runner at a time (created on the server's loop)
        try:
            from cotrain.chain import hooks

            self.hooks = hooks
        except ImportError as exc:
            self.error = f"the chain package cannot be imported ({exc})"

    @property
    def available(self) -> bool:
        return self.hooks is not None

    def token_resolver(self) -> TokenResolver | None:
        """Maps a wallet token (POST /api/v1/auth/verify) to its principal "wallet:0x...", so a
        signed-in wallet can own and start sessions. None when the chain is not available."""
        if not self.available:
            return None
        try:
            from cotrain.chain.keys import load_ledger_key
            from cotrain.chain.tokens import PREFIX, read_token

            public_key = load_ledger_key().public_key()
        except Exception as exc:  # a bad COTRAIN_LEDGER_KEY: wallet sign-in cannot work either
            self.error = f"the platform's ledger key cannot be loaded ({exc})"
            log.error("wallet tokens are not accepted: %s", self.error)
            return None

        def resolve(token: str) -> str | None:
            if not token.startswith(PREFIX + "."):
                return None
            address = read_token(public_key, token)
            return WALLET_PRINCIPAL + address if address else None

        return resolve

    # ---- the hooks (blocking: call from a thread) -------------------------------------------
    def require(self) -> None:
        """Raise ChainUnavailable (503) unless reward pools can be kept."""
        if not self.available:
            raise ChainUnavailable(
                f"This server cannot hold reward pools: {self.error}. Create the session without rewardPool, "
                "or install the chain extra (aptos-sdk) and restart the server."
            )

    def session_created(self, session_id: str, amount: int, asset: str) -> None:
        self.require()
        self.hooks.on_session_created(self.factory, session_id, amount, asset)

    def capture_progress(self, session_id: str) -> int:
        """One monitor tick of a running DiLoCo session: keep its peers' live records. Returns how many."""
        if not self.available:
            return 0
        records = self.dht.progress_records(session_id)
        if records:
            self.hooks.on_progress(self.factory, records)
        return len(records or [])

    def session_completed(self, session_id: str, config_toml: str) -> int:
        """Contributions, rewards and payouts due of a completed session. Returns the number of rewards."""
        if not self.available:
            return 0
        config = tomllib.loads(config_toml)
        last = self.dht.progress_records(session_id) or []
        return len(self.hooks.on_session_completed(self.factory, session_id, config, last_records=last))

    async def pay_due(self) -> None:
        """Send (aptos) or record as due (local) every payout due; failures are logged and retried later."""
        if not self.available:
            return
        self._paying = self._paying or asyncio.Lock()
        async with self._paying:
            try:
                # its own event loop in a thread: the local backend's database steps stay off the server's loop
                report = await asyncio.to_thread(asyncio.run, self.hooks.pay_due(self.factory))
            except Exception as exc:
                log.error("payouts were not made: %s; they are retried on the next run", exc)
                return
        for message in getattr(report, "messages", []):
            log.info("payouts: %s", message)

    async def pay_periodically(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.pay_due()
