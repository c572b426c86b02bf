"""Contributions, rewards and peer bindings (the chain's read views and bindings):

  GET  /me/contributions                 the signed-in wallet's contributions (excluded ones with the reason)
  GET  /me/rewards                       the signed-in wallet's rewards and their payout status
  GET  /rewards/sessions/{session_id}    a session's contributors, rewards, payout status, explorer links, and
                                         each peer's judged rounds (verified or why not); before settlement
                                         (challenge window) pending, the window's end and provisional credit
  POST /rewards/bindings/nonce           a one-time nonce and the text for a browser wallet to sign
  POST /rewards/bindings                 bind a session's peer to a wallet (signed by the peer's key and by
                                         the wallet's: its key file's bare signature, or a browser wallet's
                                         signMessage of the text from /rewards/bindings/nonce)
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, with_config
from pydantic.alias_generators import to_camel
from sqlalchemy.orm import Session

from cotrain.chain.bindings import AlreadyBound, SignedBinding, record_binding
from cotrain.chain.contributions import Contribution
from cotrain.chain.errors import ChainError
from cotrain.chain.orm import BindingProof, PayoutStatus, PeerBinding, RewardPoolRow
from cotrain.chain.queries import RewardView, contribution_views, reward_views
from cotrain.chain.settlement import contributions_now, kept_progress, limits_from_config
from cotrain.chain.signin import SignInError, normalize_address
from cotrain.chain.verdicts import RECENT_ROUNDS, PeerRounds, round_outcomes
from cotrain.chain.wallet_binding import bind_with_wallet_message, issue_binding_nonce
from cotrain.p2p.verification import Reason
from cotrain.server.api.deps import PlatformDep, SessionId
from cotrain.server.auth import Actor
from cotrain.server.orm import SessionStatus, TrainingSession
from cotrain.server.permissions import Action, permit
from cotrain.server.rate_limits import Limit, rate_limit
from cotrain.server.schemas import OutModel, UnixTime
from cotrain.server.wallet_auth import ChainDep, WalletDep, sign_in_failed

router = APIRouter(tags=["wallet & rewards"])


@with_config(OutModel.model_config)
@dataclass(frozen=True)
class ContributionOut(Contribution):
    """The chain's `Contribution` (its one field list) as the API shows it: camelCase JSON. `status` is
    verified, or excluded (see `reason`)."""

    @classmethod
    def of(cls, contribution: Contribution) -> ContributionOut:
        return cls(**asdict(contribution))


class RewardOut(OutModel):
    session_id: str
    address: str
    amount: int = Field(description="In the asset's smallest unit (octas for APT).")
    asset: str
    payout_status: PayoutStatus = Field(description="none | due | pending | paid | failed")
    tx_hash: str | None
    explorer_url: str | None


class RoundOutcomeOut(OutModel):
    round: int = Field(description="The DiLoCo round (outer step + 1 when the peer started its inner steps).")
    reason: Reason = Field(description="The validator's verdict: " + " | ".join(Reason) + ". Only `verified` "
                           "rounds are paid.")
    sentence: str = Field(description="What the reason means, in one plain sentence for the volunteer.")
    detail: str = Field(description="The validator's own sentence about this round (numbers included).")


class PeerRoundsOut(OutModel):
    peer_id: str
    verified_rounds: int = Field(description="Rounds the validator verified: the session pays these only.")
    judged_rounds: int = Field(description="Rounds the validator judged for this peer, verified or not.")
    reasons: dict[str, int] = Field(description="Judged rounds per reason code (e.g. {\"verified\": 3, "
                                    "\"own_data_fail\": 1}).")
    recent: list[RoundOutcomeOut] = Field(description=f"The peer's latest {RECENT_ROUNDS} judged rounds, newest "
                                          "first, each with its reason, the reason's sentence and the detail.")

    @classmethod
    def of(cls, view: PeerRounds) -> PeerRoundsOut:
        return cls.model_validate(asdict(view))


class SessionRewards(OutModel):
    session_id: str
    contributors: list[ContributionOut]
    rewards: list[RewardOut]
    rounds: list[PeerRoundsOut] = Field(description="Per peer, the rounds the session's validator judged (by peer "
                                        "id). Empty for a session without a validator: it is settled by its peers' "
                                        "progress records; a session with verdicts is paid by verified rounds only.")
    pending: bool = Field(description="True while the session's reward pool is not settled yet: it has not "
                          "completed, or it completed and its challenge window (COTRAIN_CHALLENGE_WINDOW) is open "
                          "until challengeWindowEndsAt. `contributors` and `rewards` are empty until then; "
                          "`provisional` shows the credit so far. False without a pool, once settled, and for a "
                          "failed or cancelled session (never settled).")
    challenge_window_ends_at: UnixTime | None = Field(
        description="When the challenge window of a completed session with a reward pool closes (its completion "
        "time + COTRAIN_CHALLENGE_WINDOW): the rewards are settled and paid after it; a failed spot check recorded "
        "before it voids that peer's credit for the whole session. null before completion or without a pool.")
    provisional: list[ContributionOut] = Field(
        description="Before settlement, each peer's credit so far, computed as settlement would compute it now "
        "(verified rounds and their tokens, or the reason it is excluded); it can still change. Empty once the "
        "session is settled (see `contributors`).")


class BindingRequest(BaseModel):
    """camelCase; unknown fields are ignored. Both halves are optional here so that a missing one is refused
    with a sentence that says what to do, not a schema error."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    session_id: str = Field(..., max_length=64)
    peer_id: str = Field(..., max_length=200)
    address: str = Field(..., max_length=70)
    peer_public_key: str | None = Field(None, max_length=2000, description="The peer's RSA public key (OpenSSH "
                                        "text); its peer id must derive from it.")
    peer_signature: str | None = Field(None, max_length=1400, description="The peer key's signature of "
                                       "(session, wallet).")
    wallet_public_key: str | None = Field(None, max_length=140)
    wallet_signature: str | None = Field(None, max_length=200, description="The wallet's signature of "
                                         "(session, peer id).")
    wallet_full_message: str | None = Field(None, max_length=4000, description="A browser wallet's form: the "
                                            "full message its signMessage signed (fullMessage), whose message is "
                                            "the text from /rewards/bindings/nonce; walletSignature signs it.")


class BindingNonceRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    session_id: str = Field(..., max_length=64)
    peer_id: str = Field(..., max_length=200)
    address: str = Field(..., max_length=70, description="The wallet that will sign.")


class BindingNonceOut(OutModel):
    nonce: str
    message: str = Field(description="Pass as `message` (and the nonce as `nonce`) to the wallet's signMessage, "
                         "with address, application and chainId true.")
    expires_at: datetime


class BindingOut(OutModel):
    session_id: str
    peer_id: str
    address: str
    proof: BindingProof


@router.get("/me/contributions", response_model=list[ContributionOut], summary="My contributions")
def my_contributions(address: WalletDep, chain: ChainDep) -> list[ContributionOut]:
    with chain.factory() as db:
        return [ContributionOut.of(c) for c in contribution_views(db, address=address)]


@router.get("/me/rewards", response_model=list[RewardOut], summary="My rewards and their payouts")
def my_rewards(address: WalletDep, chain: ChainDep) -> list[RewardView]:
    with chain.factory() as db:
        return reward_views(db, chain.settings, address=address)


@router.get("/rewards/sessions/{session_id}", response_model=SessionRewards,
            summary="A session's contributors, rewards and payout status", openapi_extra={"security": [{}]})
def session_rewards(session_id: SessionId, platform: PlatformDep, chain: ChainDep,
                    actor: Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]) -> SessionRewards:
    """Follows the session's read rule: a private session's rewards answer 404 to everyone else."""
    row = platform.sessions.get(session_id, actor)
    with chain.factory() as db:
        contributors = contribution_views(db, session_id=session_id)
        pooled = db.get(RewardPoolRow, session_id) is not None
        completed = row.status == SessionStatus.COMPLETED and row.finished_at is not None
        return SessionRewards.model_validate({
            "session_id": session_id,
            "contributors": [ContributionOut.of(c) for c in contributors],
            "rewards": reward_views(db, chain.settings, session_id=session_id),
            "rounds": [PeerRoundsOut.of(v) for _, v in sorted(round_outcomes(db, session_id).items())],
            "pending": pooled and not contributors and row.status not in (SessionStatus.FAILED,
                                                                           SessionStatus.CANCELLED),
            "challenge_window_ends_at": chain.challenge_window_ends_at(row.finished_at)
            if pooled and completed and row.finished_at is not None else None,
            "provisional": [] if contributors else [ContributionOut.of(c) for c in provisional(db, row)],
        })


def provisional(db: Session, row: TrainingSession) -> list[Contribution]:
    """A session's contributions as settlement would record them now (nothing is written)."""
    config = tomllib.loads(row.config_toml) if row.config_toml else None
    return contributions_now(db, row.id, kept_progress(db, row.id), limits_from_config(config))


@router.post("/rewards/bindings/nonce", response_model=BindingNonceOut, summary="A nonce for a browser wallet to "
             "sign a binding with (valid 5 minutes)", dependencies=[Depends(rate_limit(Limit.SIGN_IN)),
                                                                   Depends(permit(Action.PEER_BIND))])
def binding_nonce(body: BindingNonceRequest, chain: ChainDep) -> BindingNonceOut:
    try:
        challenge = issue_binding_nonce(chain, body.session_id, body.peer_id, body.address)
    except SignInError as exc:
        raise sign_in_failed(exc) from None
    return BindingNonceOut.model_validate(challenge, from_attributes=True)


@router.post("/rewards/bindings", response_model=BindingOut, status_code=status.HTTP_201_CREATED,
             summary="Bind a session's peer to a wallet", dependencies=[Depends(permit(Action.PEER_BIND))])
async def bind(body: BindingRequest, chain: ChainDep) -> PeerBinding:
    """The two signatures are the whole proof: no sign-in, and a signed-in owner cannot bind anyone's peer.
    With walletFullMessage, the wallet's half is a browser wallet's and follows sign-in's rules (its nonce)."""

    def record(binding: SignedBinding) -> PeerBinding:
        with chain.factory.begin() as db:
            return record_binding(db, binding)

    try:
        binding = SignedBinding(**(body.model_dump() | {"address": normalize_address(body.address)}))
        if binding.wallet_full_message is not None and binding.wallet_public_key and binding.wallet_signature:
            return await bind_with_wallet_message(chain, binding)
        return await asyncio.to_thread(record, binding)
    except SignInError as exc:
        raise sign_in_failed(exc) from None
    except AlreadyBound as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ChainError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None


@router.get("/rewards/sessions/{session_id}/proof", summary="A session's rewards rebuilt from its ledger entries",
            openapi_extra={"security": [{}]})
def session_proof(session_id: SessionId, platform: PlatformDep, chain: ChainDep,
                  actor: Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]) -> dict[str, object]:
    """Every verdict checked against its evidence, and the contributions, rewards and payouts rebuilt from the
    session's ledger entries alone (cotrain.chain.proof; `cotrain verify-session` offline): `ok`, per-peer
    rebuilt vs recorded, and `problems`, each naming its ledger entry. Follows the session's read rule."""
    from cotrain.chain.keys import KeyConfigError
    from cotrain.chain.proof import verify_session_db

    platform.sessions.get(session_id, actor)
    try:
        trusted = chain.ledger.trusted
    except (KeyConfigError, OSError) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"The platform key cannot be loaded: {exc}") from None
    with chain.factory() as db:
        return verify_session_db(db, session_id, trusted).as_dict()
