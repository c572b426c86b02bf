"""The chain's hooks in a session's life (`cotrain.chain.hooks`): a reward pool set at creation, the
peers' DHT progress records kept on every monitor tick of a running DiLoCo session (they expire from
the DHT, so they are captured while it runs), settlement when it completes, and the payouts due.

The chain is optional: when `cotrain.chain` cannot be imported or its ledger key cannot be loaded, the
server runs without rewards, and only a request that asks for a reward pool is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.server.auth import ResolvedToken, TokenResolver
from cotrain.server.errors import ServiceError
from cotrain.server.orm import SessionStatus, TrainingSession
from cotrain.server.p2p_node import ServerDHT

log = logging.getLogger(__name__)

SETTLE_WITHIN_S = 7 * 24 * 3600  # completed sessions are settled by the server's loop up to a week later
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
            from cotrain.chain.tokens import PREFIX, read_claims

            public_key = load_ledger_key().public_key()
        except Exception as exc:  # a bad COTRAIN_LEDGER_KEY: wallet sign-in cannot work either
            self.error = f"the platform's ledger key cannot be loaded ({exc})"
            log.error("wallet tokens are not accepted: %s", self.error)
            return None

        def resolve(token: str) -> ResolvedToken | None:
            if not token.startswith(PREFIX + "."):
                return None
            claims = read_claims(public_key, token)
            if claims is None:
                return None
            return ResolvedToken(WALLET_PRINCIPAL + claims.address, claims.issued_at, claims.token_id)

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

    # ---- the server's own loop: sessions the embedded executor does not run ----------------
    def running_diloco(self, except_worker: str | None) -> list[str]:
        """Running DiLoCo sessions of other workers (`cotrain worker` on other machines): their peers
        publish to this server's DHT, so their records are kept here."""
        with self.factory.begin() as db:
            query = select(TrainingSession.id).where(TrainingSession.status == SessionStatus.RUNNING,
                                                     TrainingSession.strategy == "diloco")
            if except_worker:
                query = query.where(TrainingSession.worker_id.is_distinct_from(except_worker))
            return list(db.scalars(query))

    def unsettled(self) -> list[tuple[str, str]]:
        """Completed DiLoCo sessions with a reward pool and no contributions yet (run by another worker,
        or the server stopped between completion and settlement): (id, config TOML)."""
        from cotrain.chain.orm import ContributionRow, RewardPoolRow

        with self.factory.begin() as db:
            counted = select(ContributionRow.session_id).distinct()
            query = (select(TrainingSession.id, TrainingSession.config_toml)
                     .join(RewardPoolRow, RewardPoolRow.session_id == TrainingSession.id)
                     .where(TrainingSession.status == SessionStatus.COMPLETED, TrainingSession.strategy == "diloco",
                            TrainingSession.finished_at > time.time() - SETTLE_WITHIN_S,
                            TrainingSession.id.not_in(counted)))
            return [(sid, toml) for sid, toml in db.execute(query).all()]

    async def run(self, except_worker: str | None, tick_s: float, payout_interval_s: float) -> None:
        """Every `tick_s`: keep other workers' DiLoCo records and settle what completed unsettled; pay what
        is due after a settlement and every `payout_interval_s`. Errors are logged and tried again."""
        last_payout = -payout_interval_s
        loop = asyncio.get_running_loop()
        while True:
            try:
                for session_id in await asyncio.to_thread(self.running_diloco, except_worker):
                    await asyncio.to_thread(self.capture_progress, session_id)
                rewarded = 0
                for session_id, config_toml in await asyncio.to_thread(self.unsettled):
                    rewarded += await asyncio.to_thread(self.session_completed, session_id, config_toml)
                if rewarded or loop.time() - last_payout >= payout_interval_s:
                    last_payout = loop.time()
                    await self.pay_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("keeping contributions or paying rewards failed: %s; trying again", exc)
            await asyncio.sleep(tick_s)
