"""/api/v1/auth: who am I, and API tokens for programmatic clients (wallet sign-in comes with the chain)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select

from cotrain.server.api.deps import DbId, PlatformDep
from cotrain.server.auth import Actor, create_token
from cotrain.server.orm import ApiToken
from cotrain.server.permissions import ASSIGNABLE_ROLES, Action, Role, permit
from cotrain.server.schemas import ERROR_RESPONSES

router = APIRouter(prefix="/auth", tags=["auth"], responses=ERROR_RESPONSES)

AssignableRole = Annotated[Role, Field(description="member, maintainer or admin")]


class TokenCreate(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[^\x00]*$")
    role: AssignableRole = Field(Role.MEMBER, strict=False)
    is_admin: bool = Field(False, description="Deprecated: the same as role admin.")

    @model_validator(mode="after")
    def _role(self) -> TokenCreate:
        if self.role not in ASSIGNABLE_ROLES:
            raise ValueError(f"role must be one of {', '.join(r.value for r in ASSIGNABLE_ROLES)}")
        if self.is_admin:
            self.role = Role.ADMIN
        return self


class TokenCreated(BaseModel):
    id: int
    name: str
    role: Role
    is_admin: bool
    token: str = Field(description="Shown once; only its hash is stored.")


class Me(BaseModel):
    id: int
    name: str
    role: Role
    is_admin: bool


@router.get("/me", response_model=Me, summary="Who this token belongs to")
def me(actor: Annotated[Actor, Depends(permit(Action.SELF_READ))]) -> Me:
    return Me(id=actor.token_id, name=actor.name, role=actor.role, is_admin=actor.is_admin)


@router.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED, summary="Create a token (admin)")
def new_token(body: TokenCreate, platform: PlatformDep,
              actor: Annotated[Actor, Depends(permit(Action.TOKENS_WRITE))]) -> TokenCreated:
    with platform.factory.begin() as db:
        row, token = create_token(db, body.name, body.role)
        return TokenCreated(id=row.id, name=row.name, role=Role(row.role), is_admin=row.role == Role.ADMIN,
                            token=token)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke a token (admin)")
def revoke_token(token_id: DbId, platform: PlatformDep,
                 actor: Annotated[Actor, Depends(permit(Action.TOKENS_WRITE))]) -> None:
    with platform.factory.begin() as db:
        row = db.get(ApiToken, token_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No token {token_id}.")
        if row.role == Role.ADMIN and not row.revoked:
            admins = db.scalar(
                select(func.count()).select_from(ApiToken).where(ApiToken.role == Role.ADMIN.value,
                                                                 ApiToken.revoked.is_(False))
            )
            if admins <= 1:
                raise HTTPException(
                    status.HTTP_409_CONFLICT, "This is the last admin token; create another admin token before revoking it."
                )
        row.revoked = True
