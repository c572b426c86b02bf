"""What the server hands the chain's service (`cotrain.chain.service.ChainService`), which does not import
the server: the DHT reader of the peers' progress records, the audit log's writer for payouts, and the
`SessionBook` of training sessions its loop watches. Also the wallet principals: a signed-in wallet is the
api_tokens row named "wallet:0x...", and its wallet tokens resolve to that name.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.errors import RewardsUnavailable
from cotrain.chain.orm import ContributionRow, RewardPoolRow
from cotrain.chain.payouts import PayoutAudit
from cotrain.chain.service import ChainService
from cotrain.chain.settings import MAX_CHALLENGE_WINDOW_S
from cotrain.server.audit import SYSTEM, Outcome, audit_log_for
from cotrain.server.auth import WALLET_PRINCIPAL, ResolvedToken, TokenResolver
from cotrain.server.orm import SessionStatus, TrainingSession
from cotrain.server.p2p_node import ServerDHT

log = logging.getLogger(__name__)

# completed sessions are settled by the server's loop up to a week after the longest challenge window
SETTLE_WITHIN_S = MAX_CHALLENGE_WINDOW_S + 7 * 24 * 3600


def owner_wallet(principal_name: str | None) -> str | None:
    """The address of a wallet principal ("wallet:0x..."), or None for an API token."""
    if principal_name and principal_name.startswith(WALLET_PRINCIPAL):
        return principal_name[len(WALLET_PRINCIPAL):]
    return None


def build_chain(factory: sessionmaker[Session], dht: ServerDHT) -> ChainService:
    """The chain's service on the server's database, reading the server's DHT node."""
    return ChainService(factory, dht.progress_records, payout_audit(factory))


def payout_audit(factory: sessionmaker[Session]) -> PayoutAudit:
    """Payout events into the database's audit log (the process's one, looked up when a payout happens), as
    the system: no request caused them. Never raises."""

    def record(action: str, session_id: str, ok: bool, detail: dict[str, Any]) -> None:
        outcome = Outcome.OK if ok else Outcome.FAILED
        audit_log_for(factory).record_safely(action, actor=SYSTEM, role=SYSTEM, target=session_id, outcome=outcome,
                                             detail=detail)

    return record


def resolve_wallet_token(chain: ChainService, token: str) -> ResolvedToken | None:
    """A `TokenResolver` (with `chain` bound) for wallet tokens: signature and expiry; `authenticate`
    checks sign-out and revocation."""
    claims = chain.token_claims(token)
    if claims is None:
        return None
    return ResolvedToken(WALLET_PRINCIPAL + claims.address, claims.issued_at, claims.token_id)


def wallet_token_resolver(chain: ChainService) -> TokenResolver | None:
    """The resolver the server registers, so a signed-in wallet can own and start sessions; None (logged)
    when the platform key cannot be loaded. Blocking: reads (or creates) the key file."""
    try:
        chain.require()
    except RewardsUnavailable as exc:  # a bad COTRAIN_LEDGER_KEY: wallet sign-in and rewards cannot work
        log.error("%s", exc)
        return None
    return partial(resolve_wallet_token, chain)


class RewardSessions:
    """The `SessionBook` of the server's reward loop: sessions the embedded executor (worker
    `except_worker`) does not run itself. Blocking: DB."""

    def __init__(self, factory: sessionmaker[Session], except_worker: str | None):
        self.factory = factory
        self.except_worker = except_worker

    def running_diloco(self) -> list[str]:
        """Running DiLoCo sessions of other workers (`cotrain worker` on other machines): their peers
        publish to this server's DHT, so their records are kept here."""
        with self.factory.begin() as db:
            query = select(TrainingSession.id).where(TrainingSession.status == SessionStatus.RUNNING,
                                                     TrainingSession.strategy == "diloco")
            if self.except_worker:
                query = query.where(TrainingSession.worker_id.is_distinct_from(self.except_worker))
            return list(db.scalars(query))

    def unsettled(self) -> list[tuple[str, str, float]]:
        """Completed DiLoCo sessions with a reward pool and no contributions yet (inside their challenge window,
        run by another worker, or the server stopped between completion and settlement): (id, config TOML,
        completion time), the chain settling each once its window has closed."""
        with self.factory.begin() as db:
            counted = select(ContributionRow.session_id).distinct()
            query = (select(TrainingSession.id, TrainingSession.config_toml, TrainingSession.finished_at)
                     .join(RewardPoolRow, RewardPoolRow.session_id == TrainingSession.id)
                     .where(TrainingSession.status == SessionStatus.COMPLETED, TrainingSession.strategy == "diloco",
                            TrainingSession.finished_at > time.time() - SETTLE_WITHIN_S,
                            TrainingSession.id.not_in(counted)))
            return [(sid, toml, finished or 0.0) for sid, toml, finished in db.execute(query).all()]  # never None here
