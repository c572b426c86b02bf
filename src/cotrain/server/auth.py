"""API tokens: `Authorization: Bearer <token>`. Only SHA-256 hashes are stored. On first start
with embedded defaults an admin token is created, printed once and written to
COTRAIN_HOME/admin-token (mode 600); `COTRAIN_ADMIN_TOKEN` sets it instead."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cotrain.server.orm import ApiToken, RevokedToken
from cotrain.server.permissions import Role

ADMIN_NAME = "admin"
WALLET_PRINCIPAL = "wallet:"  # api_tokens.name of a signed-in wallet: "wallet:0x..."


@dataclass(frozen=True)
class Actor:
    """Who is calling: a token's (or wallet's) id and name, and its role."""

    token_id: int
    name: str
    role: Role = Role.MEMBER

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def label(self) -> str:
        """How the audit log names this actor: "wallet:0x..." or "token:ID"."""
        return self.name if self.name.startswith(WALLET_PRINCIPAL) else f"token:{self.token_id}"


def actor_of(row: ApiToken) -> Actor:
    return Actor(row.id, row.name, Role(row.role))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "ct_" + secrets.token_urlsafe(32)


def create_token(db: Session, name: str, role: Role = Role.MEMBER) -> tuple[ApiToken, str]:
    """A new token; the plain text is returned once and never stored."""
    token = new_token()
    row = ApiToken(name=name, token_hash=hash_token(token), role=role.value, revoked=False)
    db.add(row)
    db.flush()
    return row, token


# Other kinds of bearer token (the chain's wallet sign-in) plug in here: a resolver maps a token
# it recognises to a principal name such as "wallet:0xabc..." and the time the token was issued,
# or returns None. Revocation (the principal's row, `tokens_valid_after`, revoked token ids) is the
# resolver's to check together with `principal_is_current`.
TokenResolver = Callable[[str], "ResolvedToken | None"]


@dataclass(frozen=True)
class ResolvedToken:
    principal: str  # e.g. "wallet:0x..."
    issued_at: float
    token_id: str  # the token's own id, for sign-out
_resolvers: list[TokenResolver] = []


def register_token_resolver(resolver: TokenResolver) -> None:
    """Accept another kind of token. Each principal gets a row in api_tokens (created on first
    use, as a member), so it can own sessions and be given a role like any token."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def principal_hash(principal: str) -> str:
    """The api_tokens.token_hash of a resolved principal. It starts with "p:", which no real
    token's hash (64 hex digits) does, so no bearer token can ever match it."""
    return "p:" + hashlib.sha256(principal.encode()).hexdigest()[:62]


def authenticate(db: Session, token: str, resolvers: Sequence[TokenResolver] | None = None) -> Actor | None:
    """The actor `token` stands for, or None when it is unknown, revoked or expired. `resolvers`
    (default: the registered ones) lets a package that holds its own key, such as the chain's
    wallet API, check its tokens here, with the same revocation rules, without registering."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked.is_(False)))
    if row is not None:
        return actor_of(row)
    for resolver in _resolvers if resolvers is None else resolvers:
        resolved = resolver(token)
        if resolved is None:
            continue
        if db.get(RevokedToken, resolved.token_id) is not None:
            return None
        row = principal_row(db, resolved.principal)
        if row.revoked or (row.tokens_valid_after is not None and resolved.issued_at < row.tokens_valid_after):
            return None
        return actor_of(row)
    return None


def principal_row(db: Session, principal: str) -> ApiToken:
    """The api_tokens row of a principal such as "wallet:0x...", created (as a member) on first use. Two first
    requests of one wallet at once (the sign-in's follow-up calls) both find no row: the second insert loses the
    race on the unique hash and reads the winner's row (it was a 503 "database did not answer")."""
    found = select(ApiToken).where(ApiToken.token_hash == principal_hash(principal))
    row = db.scalar(found)
    if row is not None:
        return row
    try:
        with db.begin_nested():
            row = ApiToken(name=principal[:100], token_hash=principal_hash(principal), role=Role.MEMBER.value,
                           revoked=False)
            db.add(row)
    except IntegrityError:
        row = db.scalars(found).one()
    return row


def revoke_token_id(db: Session, token_id: str, expires_at: float) -> None:
    """Sign-out: this one wallet token is refused from now until it would have expired anyway.
    Rows of tokens that have expired since are dropped: expiry refuses those on its own."""
    db.execute(delete(RevokedToken).where(RevokedToken.expires_at < time.time()))
    if db.get(RevokedToken, token_id) is None:
        db.add(RevokedToken(token_id=token_id, expires_at=expires_at))


def resolve_token(token: str) -> ResolvedToken | None:
    """What the registered resolvers make of `token` (no database check)."""
    for resolver in _resolvers:
        resolved = resolver(token)
        if resolved is not None:
            return resolved
    return None


def ensure_admin_token(db: Session, home: Path, env_token: str | None, announce: bool) -> str | None:
    """Make sure an admin token exists. Returns the plain token when one was just generated (the
    caller prints it once); None when COTRAIN_ADMIN_TOKEN set it or one already existed."""
    if env_token:  # the operator's word wins: active and admin, even if it was revoked
        wanted = hash_token(env_token)
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == wanted))
        if row is None:
            db.add(ApiToken(name=ADMIN_NAME, token_hash=wanted, role=Role.ADMIN.value, revoked=False))
        else:
            row.role, row.revoked = Role.ADMIN.value, False
        return None
    if db.scalar(select(ApiToken).where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked.is_(False))) is not None:
        return None
    _, token = create_token(db, ADMIN_NAME, Role.ADMIN)
    if announce:
        path = home / "admin-token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.chmod(path, 0o600)
    return token
