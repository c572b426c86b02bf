"""Wallet sign-in (AIP-62 signMessage / AIP-116 sign-in with an Aptos wallet):

  POST /auth/nonce    {address} → {nonce, message, application, chainId, expiresAt}
  POST /auth/verify   {address, publicKey, fullMessage, signature} → {token, address, expiresAt}
                      (also sets the `cotrain_wallet` cookie)
  POST /auth/logout   revoke the wallet token in hand (bearer or cookie), clear the cookie

The signed `application` is COTRAIN_PUBLIC_ORIGIN, or a loopback origin when none is set: never the
request's Host header. The browser side is `cotrain/chain/wallet_signin.js`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from cotrain.chain.service import ChainService
from cotrain.chain.signin import SignInError, SignInRequest, issue_challenge, verify_sign_in
from cotrain.server.auth import revoke_token_id
from cotrain.server.permissions import Action, permit
from cotrain.server.rate_limits import Limit, rate_limit
from cotrain.server.schemas import OutModel
from cotrain.server.wallet_auth import COOKIE, ChainDep, SignedIn, admit_wallet, permit_wallet, sign_in_failed

router = APIRouter(prefix="/auth", tags=["wallet & rewards"])


class WalletRequest(BaseModel):
    """A camelCase request body; unknown fields are ignored (wallet adapters may add some)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class NonceRequest(WalletRequest):
    address: str = Field(..., description="The wallet's account address (0x-prefixed hex).", max_length=70)


class NonceResponse(OutModel):
    nonce: str
    message: str = Field(description="Pass as `message` to the wallet's signMessage.")
    application: str = Field(description="The origin wallets must sign as `application`: COTRAIN_PUBLIC_ORIGIN "
                             "exactly; without it, any loopback origin (this is the server's own).")
    chain_id: int | None
    expires_at: datetime


class VerifyRequest(WalletRequest):
    address: str = Field(..., max_length=70)
    public_key: str = Field(..., max_length=140, description="Hex Ed25519 public key.")
    full_message: str = Field(..., max_length=4000, description="Exactly what the wallet signed.")
    signature: str = Field(..., max_length=200, description="Hex Ed25519 signature.")


class VerifyResponse(OutModel):
    token: str = Field(description="Send as `Authorization: Bearer <token>`; also set as a cookie.")
    address: str
    expires_at: datetime


def application_of(request: Request, chain: ChainService) -> str:
    """The `application` wallets are asked to sign: COTRAIN_PUBLIC_ORIGIN; without it, this server on the
    loopback address (the port is the socket's, `scope["server"]`), as any loopback origin is accepted then.
    Never the request's Host header: a proxy or a forged header must not choose what is accepted."""
    if chain.settings.origin:
        return chain.settings.origin
    server = request.scope.get("server")
    port = server[1] if server and len(server) > 1 and server[1] else None
    return "http://127.0.0.1" + (f":{port}" if port else "")


def _secure_cookie(chain: ChainService) -> bool:
    return (chain.settings.origin or "").startswith("https://")


@router.post("/nonce", response_model=NonceResponse, summary="A one-time sign-in nonce (valid 5 minutes)",
             dependencies=[Depends(rate_limit(Limit.SIGN_IN)),  # issue 11: 429 with Retry-After
                           Depends(permit(Action.SIGN_IN))])
def auth_nonce(body: NonceRequest, request: Request, chain: ChainDep) -> NonceResponse:
    try:
        challenge = issue_challenge(chain.nonces, body.address, application_of(request, chain),
                                    chain.settings.chain_id, ttl_s=chain.settings.nonce_ttl_s)
    except SignInError as exc:
        raise sign_in_failed(exc) from None
    return NonceResponse.model_validate(challenge)


@router.post("/verify", response_model=VerifyResponse, summary="Sign in with a wallet signature",
             dependencies=[Depends(rate_limit(Limit.SIGN_IN)),  # issue 11: 429 with Retry-After
                           Depends(permit(Action.SIGN_IN))],
             responses={401: {"description": "Refused: replay, wrong origin, wrong key, expired nonce, ..."}})
async def auth_verify(body: VerifyRequest, response: Response, chain: ChainDep) -> VerifyResponse:
    try:
        verified = await verify_sign_in(
            SignInRequest(body.address, body.public_key, body.full_message, body.signature), chain.nonces,
            chain.settings.origin, chain.settings.chain_id, auth_key_lookup=chain.auth_key_lookup)
    except SignInError as exc:
        raise sign_in_failed(exc) from None
    await asyncio.to_thread(admit_wallet, chain, verified.address, verified.public_key)  # issue 11: bans
    token, expires = chain.issue_token(verified.address)
    response.set_cookie(COOKIE, token, max_age=chain.settings.token_ttl_s, httponly=True, samesite="lax",
                        secure=_secure_cookie(chain))
    return VerifyResponse(token=token, address=verified.address, expires_at=datetime.fromtimestamp(expires, UTC))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Sign out: revoke this wallet token and clear its cookie",
             responses={401: {"description": "No wallet sign-in, or it is already invalid, expired or signed out"}})
def auth_logout(chain: ChainDep,
                signed: Annotated[SignedIn, Depends(permit_wallet(Action.SELF_SIGN_OUT))]) -> Response:
    """The token in hand (bearer or cookie) is refused everywhere from now on, until it would have expired."""
    with chain.factory.begin() as db:
        revoke_token_id(db, signed.claims.token_id, signed.claims.expires_at)
    done = Response(status_code=status.HTTP_204_NO_CONTENT)
    done.delete_cookie(COOKIE, httponly=True, samesite="lax", secure=_secure_cookie(chain))
    return done
