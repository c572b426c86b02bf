"""The composition root: everything a running server holds, built once and shared by the API, the
WebSocket and the UI. It opens the database, the fan-out hub, the DHT node, the chain and the
executor, then builds each service with exactly what it uses (units of work, settings, a publish
callable, a wake-the-executor callable, ...); no service holds the platform itself. `cotrain
worker` (worker.py) opens the database the same way, through `cotrain.db.open_database`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cotrain.db import open_database, run_migrations
from cotrain.server.audit import audit_log_for
from cotrain.server.auth import register_token_resolver
from cotrain.server.chain_bridge import RewardSessions, build_chain, wallet_token_resolver
from cotrain.server.executor import CHAIN_TICK_S, Executor
from cotrain.server.fanout import make_hub
from cotrain.server.logging_setup import announce
from cotrain.server.metrics_service import MetricsService
from cotrain.server.model_service import ModelService
from cotrain.server.p2p_node import ServerDHT
from cotrain.server.replay_service import ReplayService
from cotrain.server.session_service import SessionService
from cotrain.server.settings import Settings
from cotrain.server.signed_urls import load_secret
from cotrain.server.token_service import TokenService
from cotrain.server.user_service import UserService

log = logging.getLogger(__name__)

PAYOUT_INTERVAL_S = 60.0  # payouts due are sent (or recorded, local backend) at least this often


class Platform:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        # migrations run in `start`, off the event loop
        self.engine, self.factory = open_database(self.settings.database_url, migrate=False)
        self.hub = make_hub(self.settings.redis_url)
        self.url_secret = load_secret(self.settings.layout.root, self.settings.url_secret)  # signs download links
        self.dht = ServerDHT(self.settings.dht_host_maddrs, self.settings.dht_initial_peers,
                             self.settings.dht_announce_maddrs)
        self.chain = build_chain(self.factory, self.dht)
        self.executor: Executor | None = None
        if self.settings.embedded_worker:
            self.executor = Executor(self.settings, self.factory, self.hub, self.dht.bootstrap_addresses, self.chain)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = False
        self._payouts: asyncio.Task[None] | None = None
        self._build_services()

    def _build_services(self) -> None:
        """Each service gets what it uses, and only that."""
        self.audit = audit_log_for(self.engine, self.settings.layout.system_logs / "audit.log")
        self.tokens = TokenService(self.factory)
        self.users = UserService(self.factory)
        self.metrics = MetricsService(self.factory)
        self.replay = ReplayService(self.factory)
        self.models = ModelService(self.factory, self.settings.layout, self.settings.worker_id)
        self.sessions = SessionService(self.factory, self.settings, publish=self.publish,
                                       wake_executor=self.wake_executor, rewards=self.chain,
                                       dht_peers=self.dht.session_peers)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await asyncio.to_thread(run_migrations, self.engine)
        await asyncio.to_thread(self._admin_token)
        resolver = await asyncio.to_thread(wallet_token_resolver, self.chain)  # None (logged): no ledger key
        if resolver is not None:
            register_token_resolver(resolver)  # a signed-in wallet can own and start sessions
            announce(_sign_in_notice())  # issue 11: which origins wallets may sign in for
        await self.hub.start()
        if self.settings.start_dht:
            await asyncio.to_thread(self.dht.start)
        if self.executor:
            await self.executor.start()
        # the embedded executor keeps its own sessions' records every tick; this loop does the others'
        # (remote `cotrain worker`s), settles what is left unsettled, and pays what is due
        watched = RewardSessions(self.factory, except_worker=self.settings.worker_id if self.executor else None)
        self._payouts = asyncio.create_task(self.chain.run(watched, CHAIN_TICK_S, PAYOUT_INTERVAL_S),
                                            name="cotrain-rewards")
        self.started = True
        if self.settings.example_session:
            await asyncio.to_thread(self._create_example)

    async def stop(self) -> None:
        if self._payouts is not None:
            self._payouts.cancel()
        if self.executor:
            await self.executor.stop()
        await self.hub.stop()
        await asyncio.to_thread(self.dht.stop)
        self.engine.dispose()

    def _admin_token(self) -> None:
        home = self.settings.layout.root
        token = self.tokens.ensure_admin(home, self.settings.admin_token)
        if token:  # the one time the plain token is shown
            announce(
                f"CoTrain admin token (shown once; also in {home / 'admin-token'}):\n  {token}\n"
                f"Sign in to the web UI: {self.settings.ui_url or ''}/?token={token}",
                secret=True,  # issue 14: never into a log file
            )

    def _create_example(self) -> None:
        """Create the example session when the database has no session yet."""
        row = self.sessions.create_example()
        if row is not None:
            announce(f"Created the example session {row.id} ({row.name}); it is {row.status}.")

    # ---- for services called from any thread ----------------------------------------------
    def publish(self, messages: list[dict[str, Any]]) -> None:
        """Publish stored messages from any thread (API handlers run in a thread pool)."""
        if self.loop is None or not messages:
            return
        for message in messages:
            future = asyncio.run_coroutine_threadsafe(self.hub.publish(message), self.loop)
            future.add_done_callback(_log_failure)

    def wake_executor(self) -> None:
        """Have the embedded executor look at the queue now (from any thread)."""
        if self.loop is not None and self.executor is not None:
            self.loop.call_soon_threadsafe(self.executor.wake)


def _sign_in_notice() -> str:
    """The start-up line on wallet sign-in's accepted origin (COTRAIN_PUBLIC_ORIGIN, or loopback only)."""
    from cotrain.chain.settings import ChainConfigError, ChainSettings

    try:
        return ChainSettings.from_env().sign_in_notice()
    except ChainConfigError as exc:
        return f"Wallet sign-in is refused until this is fixed: {exc}"


def _log_failure(future: Any) -> None:
    if future.exception() is not None:
        log.warning("publishing a message failed: %s (clients replay it with `after`)", future.exception())
