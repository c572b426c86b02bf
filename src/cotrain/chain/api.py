"""HTTP API of the chain, included by the server under /api/v1 (`cotrain.chain.api:router`):

  POST /auth/nonce                       {address} → {nonce, message, application, chainId, expiresAt}
  POST /auth/verify                      {address, publicKey, fullMessage, signature} → {token, address, expiresAt}
                                         (also sets the `cotrain_wallet` cookie)
  POST /auth/logout                      revoke the wallet token in hand (bearer or cookie), clear the cookie
  GET  /me/contributions                 the signed-in wallet's contributions (excluded ones with the reason)
  GET  /me/rewards                       the signed-in wallet's rewards and their payout status
  GET  /rewards/sessions/{session_id}    a session's contributors, rewards, payout status, explorer links
  POST /rewards/bindings                 bind a session's peer to a wallet (signed by the wallet, or by the
                                         signed-in wallet itself)

The server's `app.state.platform.factory` (SQLAlchemy sessionmaker) is used unless `app.state.chain` was set.

Wallet tokens are checked by the server's `cotrain.server.auth.authenticate` on every route (signature,
expiry, sign-out, an admin's revocation). The signed `application` is COTRAIN_PUBLIC_ORIGIN, or a loopback
origin when none is set: never the request's Host header.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated

from aptos_sdk import ed25519
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.keys import load_ledger_key
from cotrain.chain.ledger import Ledger
from cotrain.chain.nonces import SqlNonceStore
from cotrain.chain.orm import ChainUser
from cotrain.chain.queries import contribution_views, reward_views
from cotrain.chain.service import ChainError, bind_peer, check_binding_signature
from cotrain.chain.settings import ChainConfigError, ChainSettings
from cotrain.chain.signin import (
    AuthKeyLookup,
    SignInError,
    SignInRequest,
    issue_challenge,
    node_auth_key_lookup,
    normalize_address,
    verify_sign_in,
)
from cotrain.chain.tokens import TokenClaims, issue_token, read_claims
from cotrain.server.api.deps import SessionId
from cotrain.server.auth import Actor, ResolvedToken, authenticate, revoke_token_id
from cotrain.server.permissions import Action, PermissionDenied, permit, require
from cotrain.server.rate_limits import Limit, rate_limit

COOKIE = "cotrain_wallet"
WALLET_PRINCIPAL = "wallet:"  # the api_tokens name of a signed-in wallet, as the server's chain bridge names it
router = APIRouter(tags=["wallet & rewards"])
_bearer = HTTPBearer(auto_error=False, description="A wallet token from POST /api/v1/auth/verify")


@dataclass
class ChainContext:
    factory: sessionmaker[Session]
    platform_key: ed25519.PrivateKey  # signs ledger entries and wallet tokens; never leaves the process
    ledger: Ledger
    settings: ChainSettings
    nonces: SqlNonceStore
    auth_key_lookup: AuthKeyLookup | None

    @classmethod
    def create(cls, factory: sessionmaker[Session], settings: ChainSettings | None = None) -> ChainContext:
        settings = settings or ChainSettings.from_env()
        lookup = node_auth_key_lookup(settings.node_url) if settings.node_url else None
        key = load_ledger_key()
        return cls(factory, key, Ledger(key), settings, SqlNonceStore(factory), lookup)

    # ---- wallet tokens: checked by the server's `authenticate`, so sign-out and revocation hold here too
    def resolve_token(self, token: str) -> ResolvedToken | None:
        """A `cotrain.server.auth.TokenResolver` for this chain's wallet tokens (signature and expiry)."""
        claims = read_claims(self.ledger.public_key, token)
        if claims is None:
            return None
        return ResolvedToken(WALLET_PRINCIPAL + claims.address, claims.issued_at, claims.token_id)

    def signed_in(self, token: str) -> SignedIn | None:
        """The wallet `token` signs in, or None when it is forged, expired, signed out or revoked (its own id,
        the user's `tokens_valid_after`, or the principal revoked). Blocking: DB."""
        claims = read_claims(self.ledger.public_key, token)
        if claims is None:
            return None
        with self.factory.begin() as db:
            actor = authenticate(db, token, resolvers=[self.resolve_token])
        return None if actor is None else SignedIn(claims.address, actor, claims)


@dataclass(frozen=True)
class SignedIn:
    address: str
    actor: Actor
    claims: TokenClaims


def get_chain(request: Request) -> ChainContext:
    ctx = getattr(request.app.state, "chain", None)
    if ctx is None:
        try:
            ctx = ChainContext.create(request.app.state.platform.factory)
        except ChainConfigError as exc:  # e.g. a COTRAIN_PUBLIC_ORIGIN that is not an origin
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"Wallet sign-in and rewards are not "
                                f"configured correctly on this server: {exc}") from None
        request.app.state.chain = ctx
    return ctx


ChainDep = Annotated[ChainContext, Depends(get_chain)]


def application_of(request: Request, ctx: ChainContext) -> str:
    """The `application` wallets are asked to sign: COTRAIN_PUBLIC_ORIGIN; without it, this server on the
    loopback address (the port is the socket's, `scope["server"]`), as any loopback origin is accepted then.
    Never the request's Host header: a proxy or a forged header must not choose what is accepted."""
    if ctx.settings.origin:
        return ctx.settings.origin
    server = request.scope.get("server")
    port = server[1] if server and len(server) > 1 and server[1] else None
    return "http://127.0.0.1" + (f":{port}" if port else "")


def signed_in_wallet(
    request: Request, ctx: ChainContext, credentials: HTTPAuthorizationCredentials | None, action: Action
) -> SignedIn:
    """The wallet signed in with a bearer token or, from a browser, the `cotrain_wallet` cookie; its role
    must be allowed `action` by the permission table. Raises 401/403 with a sentence. Blocking: DB."""
    token = credentials.credentials if credentials is not None else request.cookies.get(COOKIE)
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Sign in with your Aptos wallet first (POST "
                            "/api/v1/auth/nonce, then /api/v1/auth/verify).", headers={"WWW-Authenticate": "Bearer"})
    if token.startswith("ct_"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "This is an API token, which has no wallet: sign in with "
                            "your wallet for this (an admin revokes API tokens with DELETE /api/v1/auth/tokens/{id}).")
    signed = ctx.signed_in(token)
    if signed is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Your wallet sign-in is invalid, has expired or was "
                            "signed out; sign in with your wallet again.", headers={"WWW-Authenticate": "Bearer"})
    try:
        require(signed.actor, action)
    except PermissionDenied as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    return signed


def permit_wallet(action: Action) -> Callable[..., SignedIn]:
    """`permit(action)` for the wallet's own routes: the token may also come as the `cotrain_wallet` cookie
    (browsers), and it must be a wallet's. `.action` marks the route for the permission matrix test."""

    def check(request: Request, ctx: ChainDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> SignedIn:
        return signed_in_wallet(request, ctx, credentials, action)

    check.action = action  # type: ignore[attr-defined]
    check.__name__ = f"permit_wallet_{action.name.lower()}"
    return check


async def wallet_address(signed: Annotated[SignedIn, Depends(permit_wallet(Action.SELF_READ))]) -> str:
    return signed.address


WalletDep = Annotated[str, Depends(wallet_address)]


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class NonceRequest(Camel):
    address: str = Field(..., description="The wallet's account address (0x-prefixed hex).", max_length=70)


class NonceResponse(Camel):
    nonce: str
    message: str = Field(description="Pass as `message` to the wallet's signMessage.")
    application: str = Field(description="The origin wallets must sign as `application`: COTRAIN_PUBLIC_ORIGIN "
                             "exactly; without it, any loopback origin (this is the server's own).")
    chain_id: int | None
    expires_at: datetime


class VerifyRequest(Camel):
    address: str = Field(..., max_length=70)
    public_key: str = Field(..., max_length=140, description="Hex Ed25519 public key.")
    full_message: str = Field(..., max_length=4000, description="Exactly what the wallet signed.")
    signature: str = Field(..., max_length=200, description="Hex Ed25519 signature.")


class VerifyResponse(Camel):
    token: str = Field(description="Send as `Authorization: Bearer <token>`; also set as a cookie.")
    address: str
    expires_at: datetime


class ContributionOut(Camel):
    session_id: str
    peer_id: str
    address: str | None
    samples: int
    tokens: int
    outer_rounds: int
    compute_seconds: float
    tokens_per_second: float
    device: str
    status: str = Field(description="verified, or excluded (see reason)")
    reason: str


class RewardOut(Camel):
    session_id: str
    address: str
    amount: int = Field(description="In the asset's smallest unit (octas for APT).")
    asset: str
    payout_status: str = Field(description="none | due | pending | paid | failed")
    tx_hash: str | None
    explorer_url: str | None


class SessionRewards(Camel):
    session_id: str
    contributors: list[ContributionOut]
    rewards: list[RewardOut]


class BindingRequest(Camel):
    session_id: str = Field(..., max_length=64)
    peer_id: str = Field(..., max_length=200)
    address: str = Field(..., max_length=70)
    public_key: str | None = Field(None, max_length=140)
    signature: str | None = Field(None, max_length=200, description="The wallet's signature of the binding "
                                  "statement; leave out to bind to the signed-in wallet.")


class BindingOut(Camel):
    session_id: str
    peer_id: str
    address: str
    proof: str


def _sign_in_failed(exc: SignInError) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return HTTPException(exc.status, {"reason": exc.reason, "message": str(exc)}, headers=headers)


@router.post("/auth/nonce", response_model=NonceResponse, summary="A one-time sign-in nonce (valid 5 minutes)",
             dependencies=[Depends(rate_limit(Limit.SIGN_IN)),  # issue 11: 429 with Retry-After
                           Depends(permit(Action.SIGN_IN))])
def auth_nonce(body: NonceRequest, request: Request, ctx: ChainDep) -> NonceResponse:
    try:
        challenge = issue_challenge(ctx.nonces, body.address, application_of(request, ctx), ctx.settings.chain_id,
                                    ttl_s=ctx.settings.nonce_ttl_s)
    except SignInError as exc:
        raise _sign_in_failed(exc) from None
    return NonceResponse(nonce=challenge.nonce, message=challenge.message, application=challenge.application,
                         chain_id=challenge.chain_id, expires_at=challenge.expires_at)


@router.post("/auth/verify", response_model=VerifyResponse, summary="Sign in with a wallet signature",
             dependencies=[Depends(rate_limit(Limit.SIGN_IN)),  # issue 11: 429 with Retry-After
                           Depends(permit(Action.SIGN_IN))],
             responses={401: {"description": "Refused: replay, wrong origin, wrong key, expired nonce, ..."}})
async def auth_verify(body: VerifyRequest, request: Request, response: Response, ctx: ChainDep) -> VerifyResponse:
    try:
        verified = await verify_sign_in(
            SignInRequest(body.address, body.public_key, body.full_message, body.signature), ctx.nonces,
            ctx.settings.origin, ctx.settings.chain_id, auth_key_lookup=ctx.auth_key_lookup)
    except SignInError as exc:
        raise _sign_in_failed(exc) from None
    now = time.time()
    with ctx.factory.begin() as db:
        from cotrain.server.user_service import is_banned  # issue 11: an admin's ban refuses sign-in

        if is_banned(db, verified.address):
            raise HTTPException(status.HTTP_403_FORBIDDEN, {
                "reason": "banned", "message": "An admin of this platform has banned this wallet, so it cannot "
                "sign in; ask an admin to lift the ban."})
        user = db.get(ChainUser, verified.address)
        if user is None:
            db.add(ChainUser(address=verified.address, public_key=verified.public_key, created_at=now,
                             last_login_at=now))
        else:
            user.public_key, user.last_login_at = verified.public_key, now
    token, expires = issue_token(ctx.platform_key, verified.address, ctx.settings.token_ttl_s)
    response.set_cookie(COOKIE, token, max_age=ctx.settings.token_ttl_s, httponly=True, samesite="lax",
                        secure=(ctx.settings.origin or "").startswith("https://"))
    return VerifyResponse(token=token, address=verified.address, expires_at=datetime.fromtimestamp(expires, UTC))


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Sign out: revoke this wallet token and clear its cookie",
             responses={401: {"description": "No wallet sign-in, or it is already invalid, expired or signed out"}})
def auth_logout(ctx: ChainDep, signed: Annotated[SignedIn, Depends(permit_wallet(Action.SELF_SIGN_OUT))]) -> Response:
    """The token in hand (bearer or cookie) is refused everywhere from now on, until it would have expired."""
    with ctx.factory.begin() as db:
        revoke_token_id(db, signed.claims.token_id, signed.claims.expires_at)
    done = Response(status_code=status.HTTP_204_NO_CONTENT)
    done.delete_cookie(COOKIE, httponly=True, samesite="lax", secure=(ctx.settings.origin or "").startswith("https://"))
    return done


@router.get("/me/contributions", response_model=list[ContributionOut], summary="My contributions")
def my_contributions(address: WalletDep, ctx: ChainDep) -> list[ContributionOut]:
    with ctx.factory() as db:
        return [ContributionOut(**asdict(v)) for v in contribution_views(db, address=address)]


@router.get("/me/rewards", response_model=list[RewardOut], summary="My rewards and their payouts")
def my_rewards(address: WalletDep, ctx: ChainDep) -> list[RewardOut]:
    with ctx.factory() as db:
        return [RewardOut(**asdict(v)) for v in reward_views(db, ctx.settings, address=address)]


@router.get("/rewards/sessions/{session_id}", response_model=SessionRewards,
            summary="A session's contributors, rewards and payout status", openapi_extra={"security": [{}]})
def session_rewards(session_id: SessionId, request: Request, ctx: ChainDep,
                    actor: Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]) -> SessionRewards:
    """Follows the session's read rule: a private session's rewards answer 404 to everyone else."""
    request.app.state.platform.sessions.get(session_id, actor)
    with ctx.factory() as db:
        return SessionRewards(
            session_id=session_id,
            contributors=[ContributionOut(**asdict(v)) for v in contribution_views(db, session_id=session_id)],
            rewards=[RewardOut(**asdict(v)) for v in reward_views(db, ctx.settings, session_id=session_id)],
        )


@router.post("/rewards/bindings", response_model=BindingOut, status_code=status.HTTP_201_CREATED,
             summary="Bind a session's peer to a wallet", dependencies=[Depends(permit(Action.PEER_BIND))])
def bind(body: BindingRequest, request: Request, ctx: ChainDep,
         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> BindingOut:
    try:
        address = normalize_address(body.address)
        if body.signature is not None:
            check_binding_signature(body.session_id, body.peer_id, address, body.public_key or "", body.signature)
            proof = "signature"
        else:
            if signed_in_wallet(request, ctx, credentials, Action.PEER_BIND).address != address:
                raise HTTPException(status.HTTP_403_FORBIDDEN, "You can bind peers only to the wallet you are signed "
                                    "in with; sign the binding with the other wallet instead.")
            proof = "owner"
        with ctx.factory.begin() as db:
            row = bind_peer(db, body.session_id, body.peer_id, address, proof)
            return BindingOut(session_id=row.session_id, peer_id=row.peer_id, address=row.address, proof=row.proof)
    except SignInError as exc:
        raise _sign_in_failed(exc) from None
    except ChainError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT if "already" in str(exc) else status.HTTP_401_UNAUTHORIZED,
                            str(exc)) from None
