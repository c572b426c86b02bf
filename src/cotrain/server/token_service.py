"""API tokens as plain Python calls: who a token (or a signed download link) belongs to, the
owners' names, and an admin creating or revoking a token. The API's dependencies, the WebSocket
and the UI all ask here instead of reading the `api_tokens` table themselves."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.server.auth import Actor, actor_of, authenticate, create_token, ensure_admin_token
from cotrain.server.errors import Conflict, NotFound
from cotrain.server.orm import ApiToken
from cotrain.server.permissions import Role


class TokenService:
    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    def authenticate(self, token: str) -> Actor | None:
        """The token's owner, or None when it is unknown or revoked."""
        with self.factory.begin() as db:
            return authenticate(db, token)

    def link_actor(self, token_id: int, issued_at: float) -> Actor | None:
        """The actor a signed link was made for, or None when that user is gone, revoked, or was
        signed out (an admin's revoke) after the link was issued."""
        with self.factory.begin() as db:
            row = db.get(ApiToken, token_id)
            if row is None or row.revoked:
                return None
            if row.tokens_valid_after is not None and issued_at < row.tokens_valid_after:
                return None
            return actor_of(row)

    def names(self) -> dict[int, str]:
        """Every token's (owner's) name by id: what the UI shows as a session's owner."""
        with self.factory.begin() as db:
            return {row.id: row.name for row in db.scalars(select(ApiToken))}

    def create(self, name: str, role: Role) -> tuple[ApiToken, str]:
        """A new API token and its plain text (shown once; only its hash is stored)."""
        with self.factory.begin() as db:
            return create_token(db, name, role)

    def revoke(self, token_id: int) -> None:
        """Revoke a token for good; the last active admin token cannot be revoked (409)."""
        with self.factory.begin() as db:
            row = db.get(ApiToken, token_id)
            if row is None:
                raise NotFound(f"No token {token_id}.")
            if row.role == Role.ADMIN and not row.revoked and self._active_admins(db) <= 1:
                raise Conflict("This is the last admin token; create another admin token before revoking it.")
            row.revoked = True

    def ensure_admin(self, home: Path, env_token: str | None) -> str | None:
        """The first admin token (auth.ensure_admin_token); its plain text the one time it is made."""
        with self.factory.begin() as db:
            return ensure_admin_token(db, home, env_token, announce=True)

    @staticmethod
    def _active_admins(db: Session) -> int:
        query = select(func.count()).select_from(ApiToken).where(ApiToken.role == Role.ADMIN.value,
                                                                  ApiToken.revoked.is_(False))
        return db.scalar(query) or 0
