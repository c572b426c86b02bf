"""The signed-in wallet's contributions and rewards, through the platform's chain service and its read-only
views (the same the `/api/v1/me/*` endpoints use), each contribution with its judged rounds when the session
had a validator; and the binding of a running peer to the wallet (the peer's half pasted as a token, the
wallet's signed in the browser). Blocking: DB, except `bind`."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

import cotrain.chain
from cotrain.chain.binding_token import read_peer_half_token
from cotrain.chain.bindings import SignedBinding, check_peer_half
from cotrain.chain.errors import ChainError
from cotrain.chain.keys import KeyConfigError
from cotrain.chain.queries import contribution_views, reward_views
from cotrain.chain.service import ChainService
from cotrain.chain.settings import ChainConfigError
from cotrain.chain.signin import SignInError
from cotrain.chain.verdicts import round_outcomes, sentence_of
from cotrain.chain.wallet_binding import bind_with_wallet_message, issue_binding_nonce
from cotrain.p2p.verification import Reason
from cotrain.server.errors import NotFound
from cotrain.server.wallet_auth import COOKIE, signed_in
from cotrain.ui.context import platform

WALLET_COOKIE = COOKIE
SIGNIN_SCRIPT = Path(cotrain.chain.__file__).parent / "wallet_signin.js"


class BindRefused(Exception):
    """A binding refused; the message is the server's one sentence (why, and what to do)."""


class RewardsUnavailable(Exception):
    """The chain is not configured correctly on this server (a chain variable, or the ledger key)."""


def _chain() -> ChainService:
    chain: ChainService = platform().chain
    try:
        _ = chain.settings, chain.ledger
    except (ChainConfigError, KeyConfigError) as exc:
        raise RewardsUnavailable(str(exc)) from None
    return chain


def signin_script() -> str | None:
    """The browser sign-in script (defines `window.cotrainWalletSignIn`)."""
    return SIGNIN_SCRIPT.read_text() if SIGNIN_SCRIPT.exists() else None


def wallet_of(token: str | None) -> str | None:
    """The address a wallet token (the `cotrain_wallet` cookie) was issued to, while it is valid: not
    expired, signed out or revoked (the server's `authenticate`, as on the API)."""
    if not token:
        return None
    signed = signed_in(_chain(), token)
    return signed.address if signed is not None else None


def mine(address: str) -> dict[str, list[dict[str, Any]]]:
    chain = _chain()
    with chain.factory() as db:
        data = {
            "contributions": [asdict(v) for v in contribution_views(db, address=address)],
            "rewards": [asdict(v) for v in reward_views(db, chain.settings, address=address)],
        }
        add_rounds(db, data["contributions"])
    names = session_names({row["session_id"] for rows in data.values() for row in rows})
    for rows in data.values():
        for row in rows:
            row["session"] = names.get(row["session_id"], row["session_id"])
    return data


def add_rounds(db: Session, contributions: list[dict[str, Any]]) -> None:
    """Give each contribution (a dict) its judged rounds: `verified_rounds` and `judged_rounds` (None and 0 when
    its session had no validator), and `round_reasons`, the reasons of its other rounds, each with how many
    rounds and its sentence."""
    outcomes = {session_id: round_outcomes(db, session_id) for session_id in {c["session_id"] for c in contributions}}
    for contribution in contributions:
        peer = outcomes[contribution["session_id"]].get(contribution["peer_id"])
        contribution["verified_rounds"] = peer.verified_rounds if peer else None
        contribution["judged_rounds"] = peer.judged_rounds if peer else 0
        contribution["round_reasons"] = [
            {"reason": reason, "rounds": rounds, "sentence": sentence_of(reason)}
            for reason, rounds in (peer.reasons.items() if peer else ()) if reason != Reason.VERIFIED]


def session_names(ids: set[str]) -> dict[str, str]:
    names = {}
    for session_id in ids:
        try:
            names[session_id] = platform().sessions.get(session_id).name
        except NotFound:
            continue  # deleted, or private to its owner
    return names


def peer_half(token: str, address: str) -> SignedBinding:
    """The pasted token's peer half, checked before the wallet is asked to sign: made for this wallet, and
    signed by the key of the peer it names."""
    try:
        half = read_peer_half_token(token)
        check_peer_half(half)
    except ChainError as exc:
        raise BindRefused(str(exc)) from None
    if half.address != address:
        raise BindRefused(f"This token was made for wallet {half.address}; run the command again with "
                          f"--wallet {address}.")
    return half


def binding_nonce(half: SignedBinding) -> dict[str, str]:
    """The nonce and the text the browser wallet is to sign (its `message`)."""
    chain = _chain()
    try:
        challenge = issue_binding_nonce(chain, half.session_id, half.peer_id, half.address)
    except SignInError as exc:
        raise BindRefused(str(exc)) from None
    return {"nonce": challenge.nonce, "message": challenge.message}


async def bind(half: SignedBinding, signed: dict[str, str]) -> None:
    """Record the binding with the wallet's signMessage answer (publicKey, signature, fullMessage), by the
    server's rules for a browser wallet's half (its nonce, origin and chain)."""
    if not all(signed.get(k) for k in ("publicKey", "signature", "fullMessage")):
        raise BindRefused("The wallet returned no signed message; sign the binding again in your wallet.")
    binding = replace(half, wallet_public_key=signed["publicKey"], wallet_signature=signed["signature"],
                      wallet_full_message=signed["fullMessage"])
    try:
        await bind_with_wallet_message(_chain(), binding)
    except (SignInError, ChainError) as exc:
        raise BindRefused(str(exc)) from None
