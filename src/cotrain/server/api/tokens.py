"""/api/v1/auth: who am I, and API tokens for programmatic clients (wallet sign-in comes with the chain)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, model_validator

from cotrain.server.api.deps import DbId, PlatformDep
from cotrain.server.auth import Actor
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


class Me(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(validation_alias=AliasChoices("id", "token_id"))
    name: str
    role: Role

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented way to put a property in the JSON
    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class TokenCreated(Me):
    token: str = Field(description="Shown once; only its hash is stored.")


@router.get("/me", response_model=Me, summary="Who this token belongs to")
def me(actor: Annotated[Actor, Depends(permit(Action.SELF_READ))]) -> Me:
    return Me.model_validate(actor)


@router.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED,
             summary="Create a token (admin)")
def new_token(body: TokenCreate, platform: PlatformDep,
              actor: Annotated[Actor, Depends(permit(Action.TOKENS_WRITE))]) -> TokenCreated:
    row, token = platform.tokens.create(body.name, body.role)
    return TokenCreated(id=row.id, name=row.name, role=Role(row.role), token=token)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke a token (admin)")
def revoke_token(token_id: DbId, platform: PlatformDep,
                 actor: Annotated[Actor, Depends(permit(Action.TOKENS_WRITE))]) -> None:
    """409 for the last active admin token."""
    platform.tokens.revoke(token_id)
