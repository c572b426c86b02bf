"""/api/v1/auth: API tokens for programmatic clients (the UI's wallet login comes with the chain)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from cotrain.server.api.deps import AdminActor, DbId, PlatformDep, RequiredActor
from cotrain.server.auth import create_token
from cotrain.server.db import session_scope
from cotrain.server.models import ApiToken
from cotrain.server.schemas import ERROR_RESPONSES

router = APIRouter(prefix="/auth", tags=["auth"], responses=ERROR_RESPONSES)


class TokenCreate(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[^\x00]*$")
    is_admin: bool = False


class TokenCreated(BaseModel):
    id: int
    name: str
    is_admin: bool
    token: str = Field(description="Shown once; only its hash is stored.")


class Me(BaseModel):
    id: int
    name: str
    is_admin: bool


@router.get("/me", response_model=Me, summary="Who this token belongs to")
def me(actor: RequiredActor) -> Me:
    return Me(id=actor.token_id, name=actor.name, is_admin=actor.is_admin)


@router.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED, summary="Create a token (admin)")
def new_token(body: TokenCreate, platform: PlatformDep, actor: AdminActor) -> TokenCreated:
    with session_scope(platform.factory) as db:
        row, token = create_token(db, body.name, body.is_admin)
        return TokenCreated(id=row.id, name=row.name, is_admin=row.is_admin, token=token)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke a token (admin)")
def revoke_token(token_id: DbId, platform: PlatformDep, actor: AdminActor) -> None:
    with session_scope(platform.factory) as db:
        row = db.get(ApiToken, token_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No token {token_id}.")
        if row.is_admin and not row.revoked:
            admins = db.scalar(
                select(func.count()).select_from(ApiToken).where(ApiToken.is_admin.is_(True), ApiToken.revoked.is_(False))
            )
            if admins <= 1:
                raise HTTPException(
                    status.HTTP_409_CONFLICT, "This is the last admin token; create another admin token before revoking it."
                )
        row.revoked = True
