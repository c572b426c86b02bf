"""Read-only views for the API, the UI and the CLI: my contributions, my rewards, a session's contributors."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.chain.contributions import Contribution
from cotrain.chain.orm import ContributionRow, ContributionStatus, PayoutBatchRow, PayoutRow, PayoutStatus, RewardRow
from cotrain.chain.settings import ChainSettings


@dataclass(frozen=True)
class RewardView:
    session_id: str
    address: str
    amount: int
    asset: str
    payout_status: PayoutStatus
    tx_hash: str | None
    explorer_url: str | None


def _contribution(row: ContributionRow) -> Contribution:
    return Contribution(row.session_id, row.peer_id, row.address, row.samples, row.tokens, row.outer_rounds,
                        row.compute_seconds, row.tokens_per_second, row.device, ContributionStatus(row.status),
                        row.reason)


def contribution_views(db: Session, *, session_id: str | None = None, address: str | None = None
                       ) -> list[Contribution]:
    query = select(ContributionRow).order_by(ContributionRow.session_id, ContributionRow.peer_id)
    if session_id is not None:
        query = query.where(ContributionRow.session_id == session_id)
    if address is not None:
        query = query.where(ContributionRow.address == address)
    return [_contribution(r) for r in db.scalars(query)]


def reward_views(db: Session, settings: ChainSettings, *, session_id: str | None = None,
                 address: str | None = None) -> list[RewardView]:
    query = select(RewardRow, PayoutRow, PayoutBatchRow.tx_hash).outerjoin(
        PayoutRow, (PayoutRow.session_id == RewardRow.session_id) & (PayoutRow.address == RewardRow.address)
    ).outerjoin(PayoutBatchRow, PayoutBatchRow.id == PayoutRow.batch_id).order_by(RewardRow.session_id,
                                                                                  RewardRow.address)
    if session_id is not None:
        query = query.where(RewardRow.session_id == session_id)
    if address is not None:
        query = query.where(RewardRow.address == address)
    views = []
    for reward, payout, batch_hash in db.execute(query).all():
        # paid: the committed transaction; pending: the submitted one (its link shows it in flight)
        tx = payout.tx_hash if payout is not None and payout.tx_hash else (
            batch_hash if payout is not None and payout.status == PayoutStatus.PENDING else None)
        views.append(RewardView(reward.session_id, reward.address, reward.amount, reward.asset,
                                PayoutStatus(payout.status) if payout is not None else PayoutStatus.NONE, tx,
                                settings.explorer_txn_url(tx) if tx else None))
    return views
