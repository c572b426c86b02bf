"""The chain's one service, as the server holds it (`platform.chain`): reward pools, the peers' progress
kept while a DiLoCo session runs, settlement once the challenge window after its completion has closed
(COTRAIN_CHALLENGE_WINDOW), payouts, and the platform key's wallet tokens.

The sync/async boundary is explicit. Every method that touches the database or the DHT is a plain
(blocking) method: the server calls it from a thread (`asyncio.to_thread`, or FastAPI's thread pool).
Two methods are async: `pay_due` (the aptos backend talks to the node with aptos-sdk's async client; its
database steps run in threads) and `run`, the server's loop, which calls the blocking steps with
`asyncio.to_thread`.

The chain does not import the server. What it needs from there comes in as arguments: a reader of the
DHT's live progress records, the audit log's writer, and (for `run`) the `SessionBook` that knows the
server's training sessions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain import tokens
from cotrain.chain.errors import RewardsUnavailable
from cotrain.chain.keys import KeyConfigError
from cotrain.chain.ledger import Ledger
from cotrain.chain.nonces import SqlNonceStore
from cotrain.chain.orm import RewardRow
from cotrain.chain.payouts import PayoutAudit
from cotrain.chain.runtime import platform_ledger, run_payouts
from cotrain.chain.settings import ChainSettings
from cotrain.chain.settlement import (
    keep_progress,
    kept_progress,
    limits_from_config,
    retry_on_conflict,
    set_reward_pool,
    settle_session,
)
from cotrain.chain.signin import AuthKeyLookup, node_auth_key_lookup
from cotrain.db.retry import OUTAGE, is_outage, retry_db
from cotrain.p2p.progress import PeerProgress

log = logging.getLogger(__name__)

# A session's live progress records on the DHT, or None when they cannot be read now. Blocking.
RecordReader = Callable[[str], list[PeerProgress] | None]


class SessionBook(Protocol):
    """The server's training sessions, as far as rewards need them (their table is the server's). Blocking."""

    def running_diloco(self) -> list[str]:
        """Running DiLoCo sessions whose peers' records this loop keeps (not the embedded executor's own)."""
        ...

    def unsettled(self) -> list[tuple[str, str, float]]:
        """(id, config TOML, completion time in epoch seconds) of completed DiLoCo sessions with a reward pool
        and no contributions yet."""
        ...


class ChainService:
    """Reward pools, kept progress, settlement, payouts and wallet tokens on one database."""

    def __init__(self, factory: sessionmaker[Session], read_records: RecordReader, audit: PayoutAudit, *,
                 settings: ChainSettings | None = None, ledger: Ledger | None = None):
        """`settings` and `ledger` default to the environment's (ChainSettings.from_env, the platform key),
        read on first use: a wrong variable shows as an error where it is needed, not at start-up."""
        self.factory = factory
        self.read_records = read_records
        self.audit = audit
        self.nonces = SqlNonceStore(factory)
        self._settings = settings
        self._ledger = ledger
        self._loading = threading.Lock()
        self._paying = asyncio.Lock()  # one payout runner at a time
        self._payouts_missed = False  # the last run met a database outage: `run` tries again on its next tick

    # ---- configuration, read once (blocking: environment, key file) --------------------------
    @property
    def settings(self) -> ChainSettings:
        """Raises ChainConfigError while a chain variable is wrong."""
        with self._loading:
            if self._settings is None:
                self._settings = ChainSettings.from_env()
            return self._settings

    @property
    def ledger(self) -> Ledger:
        """The platform ledger (its key signs ledger entries and wallet tokens). Raises KeyConfigError while
        the key cannot be loaded; it is created on first use when there is none."""
        with self._loading:
            if self._ledger is None:
                self._ledger = platform_ledger()
            return self._ledger

    @property
    def auth_key_lookup(self) -> AuthKeyLookup | None:
        """Reads an account's current authentication key from the Aptos node (rotated keys), when one is set."""
        node_url = self.settings.node_url
        return node_auth_key_lookup(node_url) if node_url else None

    # ---- wallet tokens -------------------------------------------------------------------
    def issue_token(self, address: str) -> tuple[str, float]:
        """A wallet token for `address` and its expiry (epoch seconds)."""
        return tokens.issue_token(self.ledger.key, address, self.settings.token_ttl_s)

    def token_claims(self, token: str) -> tokens.TokenClaims | None:
        """The claims of a wallet token signed with the platform key and not expired, else None. Sign-out and
        revocation are the server's to check (`cotrain.server.auth.authenticate`)."""
        if not token.startswith(tokens.PREFIX + "."):
            return None
        return tokens.read_claims(self.ledger.public_key, token)

    # ---- a session's life (blocking: DB, DHT) ----------------------------------------------
    def require(self) -> None:
        """Raise RewardsUnavailable unless reward pools can be kept: they are written to the ledger, signed
        with the platform key."""
        try:
            _ = self.ledger
        except (KeyConfigError, OSError) as exc:  # OSError: a key file that cannot be read or created
            raise RewardsUnavailable(f"This server cannot hold reward pools or sign wallet tokens: {exc} Create "
                                     "the session without rewardPool, or fix the key and restart the server.") from None

    def session_created(self, session_id: str, amount: int, asset: str) -> None:
        """Record the reward pool of a session being created."""

        def create() -> None:
            with self.factory.begin() as db:
                set_reward_pool(db, self.ledger, session_id, amount, asset)

        retry_on_conflict(create)

    def keep(self, records: Iterable[PeerProgress]) -> None:
        batch = list(records)

        def keep() -> None:
            with self.factory.begin() as db:
                keep_progress(db, batch)

        retry_on_conflict(keep)

    def capture_progress(self, session_id: str) -> int:
        """One monitor tick of a running DiLoCo session: keep its peers' live records. Returns how many."""
        records = self.read_records(session_id) or []
        if records:
            self.keep(records)
        return len(records)

    def settle(self, session_id: str, config: Mapping[str, Any] | None = None,
               last_records: Iterable[PeerProgress] = ()) -> list[RewardRow]:
        """Contributions from the kept progress records (plus `last_records`, e.g. a final DHT read), then the
        pro-rata rewards and the payouts due. Idempotent."""
        last = list(last_records)

        def settle() -> list[RewardRow]:
            with self.factory.begin() as db:
                keep_progress(db, last)
                return settle_session(db, self.ledger, session_id, kept_progress(db, session_id),
                                      limits_from_config(config))

        return retry_on_conflict(settle)

    def challenge_window_ends_at(self, finished_at: float) -> float:
        """When the challenge window of a session completed at `finished_at` closes (COTRAIN_CHALLENGE_WINDOW)."""
        return finished_at + self.settings.challenge_window_s

    def session_completed(self, session_id: str, config_toml: str, finished_at: float,
                          now: float | None = None) -> int:
        """Contributions, rewards and payouts due of a session completed at `finished_at` (epoch seconds), once
        its challenge window has closed: until then nothing is settled, so verdicts recorded meanwhile (a
        late spot check) still count, and 0 is returned. Returns the number of rewards. Without a window the
        peers' live records are read one last time; after one, only the records kept until the session ended
        count (`capture_progress` at completion): the volunteers may go on training together after it."""
        if (time.time() if now is None else now) < self.challenge_window_ends_at(finished_at):
            return 0
        last = (self.read_records(session_id) or []) if self.settings.challenge_window_s == 0 else []
        return len(self.settle(session_id, tomllib.loads(config_toml), last))

    def keep_and_settle(self, sessions: SessionBook) -> int:
        """One tick of `run`: keep the records of the sessions it watches, settle what completed unsettled
        and whose challenge window has closed. Returns the number of rewards settled."""
        for session_id in sessions.running_diloco():
            self.capture_progress(session_id)
        return sum(self.session_completed(session_id, config_toml, finished_at)
                   for session_id, config_toml, finished_at in sessions.unsettled())

    # ---- async: payouts and the server's loop ------------------------------------------------
    async def pay_due(self) -> None:
        """Send (aptos) or record as due (local) every payout due. Failures are logged and retried on the
        next call; nobody is paid twice."""
        async with self._paying:
            self._payouts_missed = False
            try:
                settings, ledger = await asyncio.to_thread(lambda: (self.settings, self.ledger))
                report = await run_payouts(self.factory, ledger, settings, self.audit)
            except Exception as exc:
                if is_outage(exc):  # logged once per outage; `run` pays them on its first tick after it
                    OUTAGE.failed("payouts", exc)
                    self._payouts_missed = True
                else:
                    log.error("payouts were not made: %s; they are retried on the next run", exc)
                return
        for message in report.messages:
            log.info("payouts: %s", message)

    async def run(self, sessions: SessionBook, tick_s: float, payout_interval_s: float) -> None:
        """Every `tick_s`: `keep_and_settle`; pay what is due after a settlement and every
        `payout_interval_s`. Errors are logged and tried again on the next tick; while the database is
        away, the tick waits for it (cotrain.db.retry), then settles and pays what came due meanwhile."""
        loop = asyncio.get_running_loop()
        last_payout = loop.time() - payout_interval_s
        while True:
            try:
                rewarded = await retry_db("settling rewards", self.keep_and_settle, sessions)
                if rewarded or self._payouts_missed or loop.time() - last_payout >= payout_interval_s:
                    last_payout = loop.time()
                    await self.pay_due()
            except Exception as exc:
                log.warning("keeping contributions or paying rewards failed: %s; trying again", exc)
            await asyncio.sleep(tick_s)
