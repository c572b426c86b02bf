"""Users and their roles: every actor of the platform (signed-in wallets and API tokens), listed with
its role, and an admin's changes to them. The REST routes (`server/api/users.py`), `cotrain users`
and the UI's Users page all go through these functions, so the rules live in one place:

- A user is referred to by a wallet address ("0x...") or an API token's id ("token:ID").
- Setting a wallet's role creates its row when it never signed in, so an admin can pre-assign one.
- The last active admin cannot be demoted, banned or revoked (409): the platform would be left
  with nobody who can change roles.
- Revoking a wallet ends every token it holds (`tokens_valid_after` = now); a new sign-in works
  unless the wallet is also banned. A ban lasts until it is lifted with `ban=False` (setting a role
  does not lift it: a role change and a ban are separate decisions). Revoking an API token is final.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.server.auth import WALLET_PRINCIPAL, principal_hash, principal_row
from cotrain.server.errors import Conflict, NotFound, ServiceError
from cotrain.server.orm import ApiToken
from cotrain.server.permissions import ASSIGNABLE_ROLES, Role

TOKEN_PREFIX = "token:"  # how a user reference names an API token
Kind = Literal["wallet", "token"]


class BadUserRef(ServiceError):
    status_code = 400


class BadRole(ServiceError):
    status_code = 422


@dataclass(frozen=True)
class UserRef:
    """A wallet (by its normalized address) or an API token (by id)."""

    kind: Kind
    address: str | None = None
    token_id: int | None = None

    def __str__(self) -> str:
        if self.kind == "wallet" and self.address is not None:
            return self.address
        return f"{TOKEN_PREFIX}{self.token_id}"


@dataclass(frozen=True)
class UserView:
    ref: str  # "0x..." or "token:ID": what the role and revoke calls take
    kind: Kind
    id: int  # the api_tokens row (sessions' owner id)
    name: str  # the address for a wallet, the token's name otherwise
    address: str | None
    role: Role
    created_at: float
    revoked: bool  # a banned wallet, or a revoked API token
    tokens_valid_after: float | None  # a wallet's tokens issued before this are refused
    last_login_at: float | None  # a wallet's last sign-in (None: never signed in, or an API token)


def parse_ref(value: str) -> UserRef:
    """"token:ID" or a wallet address (normalized the way sign-in does), else a clear 400."""
    text = (value or "").strip()
    if text.lower().startswith(TOKEN_PREFIX):
        digits = text[len(TOKEN_PREFIX):]
        if not digits.isdigit() or not 1 <= int(digits) <= 2**31 - 1:
            raise BadUserRef(f"{value!r} is not an API token reference; write token:ID with the token's id "
                             "(listed by GET /api/v1/users and `cotrain users list`).")
        return UserRef("token", token_id=int(digits))
    from cotrain.chain.signin import SignInError, normalize_address

    try:
        return UserRef("wallet", address=normalize_address(text))
    except SignInError:
        raise BadUserRef(f"{value!r} is neither a wallet address (0x followed by up to 64 hex digits) nor an "
                         "API token reference (token:ID).") from None


def parse_role(value: str | Role) -> Role:
    try:
        role = Role(value)
    except ValueError:
        role = None
    if role not in ASSIGNABLE_ROLES:
        names = ", ".join(r.value for r in ASSIGNABLE_ROLES)
        raise BadRole(f"{value!r} is not a role a user can have; use one of {names}.")
    return role


def _is_wallet(row: ApiToken) -> bool:
    return row.token_hash.startswith("p:") and row.name.startswith(WALLET_PRINCIPAL)


def _view(row: ApiToken, last_login: dict[str, float]) -> UserView:
    if _is_wallet(row):
        address = row.name[len(WALLET_PRINCIPAL):]
        return UserView(address, "wallet", row.id, address, address, Role(row.role), row.created_at, row.revoked,
                        row.tokens_valid_after, last_login.get(address))
    return UserView(f"{TOKEN_PREFIX}{row.id}", "token", row.id, row.name, None, Role(row.role), row.created_at,
                    row.revoked, None, None)


def _last_logins(db: Session, rows: list[ApiToken]) -> dict[str, float]:
    addresses = [r.name[len(WALLET_PRINCIPAL):] for r in rows if _is_wallet(r)]
    if not addresses:
        return {}
    from cotrain.chain.orm import ChainUser

    found = db.execute(select(ChainUser.address, ChainUser.last_login_at).where(ChainUser.address.in_(addresses)))
    return {address: at for address, at in found}


def list_users(factory: sessionmaker[Session], role: Role | None = None, kind: Kind | None = None,
               limit: int = 50, offset: int = 0) -> tuple[list[UserView], int]:
    """One page of users, newest first, and how many match."""
    query = select(ApiToken)
    if role is not None:
        query = query.where(ApiToken.role == role.value)
    if kind == "wallet":
        query = query.where(ApiToken.token_hash.startswith("p:"), ApiToken.name.startswith(WALLET_PRINCIPAL))
    elif kind == "token":
        query = query.where(~ApiToken.token_hash.startswith("p:"))
    with factory() as db:
        total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(db.scalars(query.order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
                               .limit(limit).offset(offset)))
        logins = _last_logins(db, rows)
        return [_view(r, logins) for r in rows], total


def _find(db: Session, ref: UserRef, create: bool = False) -> ApiToken:
    if ref.kind == "token":
        row = db.get(ApiToken, ref.token_id)
        if row is None or row.token_hash.startswith("p:"):
            raise NotFound(f"No API token {ref.token_id}; the tokens are listed by GET /api/v1/users?kind=token "
                           "and `cotrain users list --kind token`.")
        return row
    principal = f"{WALLET_PRINCIPAL}{ref.address}"
    if create:
        return principal_row(db, principal)
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == principal_hash(principal)))
    if row is None:
        raise NotFound(f"Wallet {ref.address} has never signed in here, so it holds no tokens to revoke.")
    return row


def _keep_an_admin(db: Session, row: ApiToken, what: str) -> None:
    """Refuse to take the admin role away from the last active admin."""
    if row.role != Role.ADMIN.value or row.revoked:
        return
    # FOR UPDATE (PostgreSQL) so two admins demoting each other at once cannot both succeed
    admins = db.scalars(select(ApiToken.id).where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked.is_(False))
                        .with_for_update()).all()
    if len(admins) <= 1:
        raise Conflict(f"This is the last admin; make another user admin before you {what}.")


def get_user(factory: sessionmaker[Session], ref: UserRef | str) -> UserView:
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    with factory() as db:
        row = _find(db, ref)
        return _view(row, _last_logins(db, [row]))


def set_role(factory: sessionmaker[Session], ref: UserRef | str, role: Role | str) -> tuple[UserView, Role]:
    """Give a wallet (created if it never signed in) or an API token `role`; returns the user and
    its previous role. Takes effect on the user's next request: roles are read per request."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    role = parse_role(role)
    with factory.begin() as db:
        row = _find(db, ref, create=ref.kind == "wallet")
        before = Role(row.role)
        if role is not Role.ADMIN:
            _keep_an_admin(db, row, "demote this one")
        row.role = role.value
        db.flush()
        return _view(row, _last_logins(db, [row])), before


def revoke(factory: sessionmaker[Session], ref: UserRef | str, ban: bool | None = None,
           now: float | None = None) -> UserView:
    """End every token of a wallet issued until now; `ban=True` also refuses its future sign-ins,
    `ban=False` lifts a ban. An API token is revoked for good (`ban` cannot bring it back)."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    now = time.time() if now is None else now
    with factory.begin() as db:
        row = _find(db, ref, create=ref.kind == "wallet" and ban is True)  # pre-banning a wallet is allowed
        if ref.kind == "token":
            if ban is False:
                raise Conflict("A revoked API token stays revoked; create a new token (POST /api/v1/auth/tokens).")
            _keep_an_admin(db, row, "revoke this token")
            row.revoked = True
        else:
            if ban:
                _keep_an_admin(db, row, "ban this one")
            row.tokens_valid_after = now
            if ban is not None:
                row.revoked = ban
        db.flush()
        return _view(row, _last_logins(db, [row]))


def is_banned(db: Session, address: str) -> bool:
    """Whether an admin banned this (normalized) wallet address; sign-in refuses it."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == principal_hash(WALLET_PRINCIPAL + address)))
    return row is not None and row.revoked


class UserService:
    """The functions above bound to the server's units of work: what the API and the UI call
    (`cotrain users` calls the functions with the factory it opened)."""

    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    def list(self, role: Role | None = None, kind: Kind | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[UserView], int]:
        return list_users(self.factory, role, kind, limit, offset)

    def get(self, ref: UserRef | str) -> UserView:
        return get_user(self.factory, ref)

    def set_role(self, ref: UserRef | str, role: Role | str) -> tuple[UserView, Role]:
        return set_role(self.factory, ref, role)

    def revoke(self, ref: UserRef | str, ban: bool | None = None) -> UserView:
        return revoke(self.factory, ref, ban)
