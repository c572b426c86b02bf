"""The signed-in wallet's contributions and rewards, through the chain package's own context and
read-only views (the same the `/api/v1/me/*` endpoints use). Blocking: DB."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from cotrain.ui.context import platform, server_app

WALLET_COOKIE = "cotrain_wallet"


class RewardsUnavailable(Exception):
    """The chain package is missing or not configured on this server."""


def _chain() -> Any:
    try:
        from cotrain.chain.api import ChainContext
    except ImportError as exc:
        raise RewardsUnavailable(str(exc)) from None
    state = server_app().state
    ctx = getattr(state, "chain", None)
    if ctx is None:
        try:
            ctx = ChainContext.create(platform().factory)
        except Exception as exc:  # e.g. no ledger key and none may be created
            raise RewardsUnavailable(str(exc)) from None
        state.chain = ctx
    return ctx


def signin_script() -> str | None:
    """The chain package's browser sign-in script (defines `window.cotrainWalletSignIn`)."""
    try:
        import cotrain.chain
    except ImportError:
        return None
    path = Path(cotrain.chain.__file__).parent / "wallet_signin.js"
    return path.read_text() if path.exists() else None


def wallet_of(token: str | None) -> str | None:
    """The address a wallet token (the `cotrain_wallet` cookie) was issued to, while it is valid: not
    expired, signed out or revoked (the server's `authenticate`, as on the API)."""
    if not token:
        return None
    signed = _chain().signed_in(token)
    return signed.address if signed is not None else None


def mine(address: str) -> dict[str, list[dict[str, Any]]]:
    from cotrain.chain.queries import contribution_views, reward_views

    ctx = _chain()
    with ctx.factory() as db:
        data = {
            "contributions": [asdict(v) for v in contribution_views(db, address=address)],
            "rewards": [asdict(v) for v in reward_views(db, ctx.settings, address=address)],
        }
    names = session_names({row["session_id"] for rows in data.values() for row in rows})
    for rows in data.values():
        for row in rows:
            row["session"] = names.get(row["session_id"], row["session_id"])
    return data


def session_names(ids: set[str]) -> dict[str, str]:
    from cotrain.server.errors import NotFound

    names = {}
    for session_id in ids:
        try:
            names[session_id] = platform().sessions.get(session_id).name
        except NotFound:
            continue  # deleted, or private to its owner
    return names
