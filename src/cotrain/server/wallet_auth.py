"""Wallet sign-in on the server's routes and pages: the chain service of a request, the wallet signed in
with a bearer token or (browsers) the `cotrain_wallet` cookie, and the admission of a wallet that just
proved its key.

Wallet tokens are checked by `cotrain.server.auth.authenticate`, like API tokens: signature and expiry,
sign-out, an admin's revocation or ban. Blocking functions (DB) say so; FastAPI runs the sync dependencies
in its thread pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cotrain.chain.errors import RewardsUnavailable
from cotrain.chain.orm import ChainUser
from cotrain.chain.service import ChainService
from cotrain.chain.settings import ChainConfigError
from cotrain.chain.signin import SignInError
from cotrain.chain.tokens import TokenClaims
from cotrain.server.auth import Actor, authenticate
from cotrain.server.chain_bridge import resolve_wallet_token
from cotrain.server.permissions import Action, PermissionDenied, require
from cotrain.server.request_context import note_actor
from cotrain.server.user_service import is_banned

COOKIE = "cotrain_wallet"
bearer = HTTPBearer(auto_error=False, description="A wallet token from POST /api/v1/auth/verify")


@dataclass(frozen=True)
class SignedIn:
    address: str
    actor: Actor
    claims: TokenClaims


def get_chain(request: Request) -> ChainService:
    """The platform's chain service; 503 while a chain variable (APTOS_*, COTRAIN_PUBLIC_ORIGIN, ...) is wrong
    or the ledger key cannot be loaded."""
    chain: ChainService = request.app.state.platform.chain
    try:
        _ = chain.settings
        chain.require()
    except (ChainConfigError, RewardsUnavailable) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Wallet sign-in and rewards are not configured "
                            f"correctly on this server: {exc}") from None
    return chain


ChainDep = Annotated[ChainService, Depends(get_chain)]


def sign_in_failed(exc: SignInError) -> HTTPException:
    """A refused sign-in (or a malformed address) as the routes answer it: the reason and the sentence."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return HTTPException(exc.status, {"reason": exc.reason, "message": str(exc)}, headers=headers)


def signed_in(chain: ChainService, token: str) -> SignedIn | None:
    """The wallet `token` signs in, or None when it is forged, expired, signed out or revoked (its own id,
    the user's `tokens_valid_after`, or the principal revoked). Blocking: DB."""
    claims = chain.token_claims(token)
    if claims is None:
        return None
    with chain.factory.begin() as db:
        actor = authenticate(db, token, resolvers=[partial(resolve_wallet_token, chain)])
    if actor is not None:
        note_actor(actor.label)  # issue 14: the logs of this request name its actor
    return None if actor is None else SignedIn(claims.address, actor, claims)


def signed_in_wallet(
    request: Request, chain: ChainService, credentials: HTTPAuthorizationCredentials | None, action: Action
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
    signed = signed_in(chain, token)
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

    def check(request: Request, chain: ChainDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> SignedIn:
        return signed_in_wallet(request, chain, credentials, action)

    check.action = action  # type: ignore[attr-defined]  # a mark read by the permission matrix test
    check.__name__ = f"permit_wallet_{action.name.lower()}"
    return check


def wallet_address(signed: Annotated[SignedIn, Depends(permit_wallet(Action.SELF_READ))]) -> str:
    return signed.address


WalletDep = Annotated[str, Depends(wallet_address)]


def admit_wallet(chain: ChainService, address: str, public_key: str) -> None:
    """A wallet proved its key: refuse it (403) when an admin banned it, else remember its sign-in
    (`chain_users`). Blocking: DB."""
    now = time.time()
    with chain.factory.begin() as db:
        if is_banned(db, address):
            raise HTTPException(status.HTTP_403_FORBIDDEN, {
                "reason": "banned", "message": "An admin of this platform has banned this wallet, so it cannot "
                "sign in; ask an admin to lift the ban."})
        user = db.get(ChainUser, address)
        if user is None:
            db.add(ChainUser(address=address, public_key=public_key, created_at=now, last_login_at=now))
        else:
            user.public_key, user.last_login_at = public_key, now
