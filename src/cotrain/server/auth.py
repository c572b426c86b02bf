"""API tokens: `Authorization: Bearer <token>`. Only SHA-256 hashes are stored. On first start
with embedded defaults an admin token is created, printed once and written to
COTRAIN_HOME/admin-token (mode 600); `COTRAIN_ADMIN_TOKEN` sets it instead."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.server.models import ApiToken

ADMIN_NAME = "admin"


@dataclass(frozen=True)
class Actor:
    """Who is calling: a token's id and name, and whether it is an admin."""

    token_id: int
    name: str
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "ct_" + secrets.token_urlsafe(32)


def create_token(db: Session, name: str, is_admin: bool = False) -> tuple[ApiToken, str]:
    """A new token; the plain text is returned once and never stored."""
    token = new_token()
    row = ApiToken(name=name, token_hash=hash_token(token), is_admin=is_admin, revoked=False)
    db.add(row)
    db.flush()
    return row, token


# Other kinds of bearer token (the chain's wallet sign-in) plug in here: a resolver maps a token
# it recognises to a principal name such as "wallet:0xabc...", or returns None.
TokenResolver = Callable[[str], "str | None"]
_resolvers: list[TokenResolver] = []


def register_token_resolver(resolver: TokenResolver) -> None:
    """Accept another kind of token. Each principal gets a row in api_tokens (created on first
    use), so it can own sessions like any token; it is never an admin."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def principal_hash(principal: str) -> str:
    """The api_tokens.token_hash of a resolved principal. It starts with "p:", which no real
    token's hash (64 hex digits) does, so no bearer token can ever match it."""
    return "p:" + hashlib.sha256(principal.encode()).hexdigest()[:62]


def authenticate(db: Session, token: str) -> Actor | None:
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked.is_(False)))
    if row is not None:
        return Actor(row.id, row.name, row.is_admin)
    for resolver in _resolvers:
        principal = resolver(token)
        if not principal:
            continue
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == principal_hash(principal)))
        if row is None:
            row = ApiToken(name=principal[:100], token_hash=principal_hash(principal), is_admin=False, revoked=False)
            db.add(row)
            db.flush()
        return None if row.revoked else Actor(row.id, row.name, False)
    return None


def ensure_admin_token(db: Session, home: Path, env_token: str | None, announce: bool) -> str | None:
    """Make sure an admin token exists. Returns the plain token when one was just generated (the
    caller prints it once); None when COTRAIN_ADMIN_TOKEN set it or one already existed."""
    if env_token:  # the operator's word wins: active and admin, even if it was revoked
        wanted = hash_token(env_token)
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == wanted))
        if row is None:
            db.add(ApiToken(name=ADMIN_NAME, token_hash=wanted, is_admin=True, revoked=False))
        else:
            row.is_admin, row.revoked = True, False
        return None
    if db.scalar(select(ApiToken).where(ApiToken.is_admin.is_(True), ApiToken.revoked.is_(False))) is not None:
        return None
    _, token = create_token(db, ADMIN_NAME, is_admin=True)
    if announce:
        path = home / "admin-token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.chmod(path, 0o600)
    return token
