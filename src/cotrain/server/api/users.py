"""/api/v1/users (admin): every actor with its role, setting roles, revoking a user's tokens.

A user is named in the path by its wallet address (`0x...`) or, for an API token, `token:ID`
(each user's `ref` in the list):

  GET  /users?role=&kind=wallet|token&limit=&offset=    the users, newest first
  GET  /users/{address}                                 one user
  PUT  /users/{address}/role    {"role": "member"|"maintainer"|"admin"}   (a wallet that never signed
                                                                           in gets its row: pre-assigned)
  POST /users/{address}/revoke  {"ban": true|false} (optional)            ends its tokens; ban/un-ban

The rules are in `cotrain.server.user_service`, shared with `cotrain users` and the UI.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from cotrain.server.api.deps import PlatformDep
from cotrain.server.auth import Actor
from cotrain.server.permissions import Action, Role, permit
from cotrain.server.schemas import ERROR_RESPONSES, CamelModel, OutModel, Page, UnixTime

router = APIRouter(prefix="/users", tags=["users"], responses=ERROR_RESPONSES)

UserRefPath = Annotated[str, Path(min_length=1, max_length=80,
                                  description="A wallet address (0x...), or token:ID for an API token.")]


class UserOut(OutModel):
    ref: str = Field(description="How to name this user in /users/{address}/...: its address, or token:ID.")
    kind: Literal["wallet", "token"]
    id: int = Field(description="The user's id (what sessions' owner ids refer to).")
    name: str = Field(description="The wallet's address, or the API token's name.")
    address: str | None
    role: Role
    created_at: UnixTime | None
    revoked: bool = Field(description="A banned wallet, or a revoked API token.")
    tokens_valid_after: UnixTime | None = Field(description="A wallet's tokens issued before this are refused.")
    last_login_at: UnixTime | None = Field(description="A wallet's last sign-in; null for API tokens.")


class RoleIn(CamelModel):
    role: Literal["member", "maintainer", "admin"]


class RevokeIn(CamelModel):
    ban: bool | None = Field(None, description="true: also refuse its sign-ins until un-banned; false: lift a ban; "
                                               "left out: the ban stays as it is.")


class RoleChanged(UserOut):
    previous_role: Role


@router.get("", response_model=Page[UserOut], summary="Users and their roles (admin)")
async def list_users(
    platform: PlatformDep,
    actor: Annotated[Actor, Depends(permit(Action.USERS_READ))],
    role: Annotated[Literal["member", "maintainer", "admin"] | None, Query(description="Only this role.")] = None,
    kind: Annotated[Literal["wallet", "token"] | None, Query(description="Only wallets or only API tokens.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Page[UserOut]:
    views, total = await run_in_threadpool(platform.users.list, Role(role) if role else None, kind, limit, offset)
    return Page[UserOut](items=[UserOut.model_validate(v) for v in views], total=total, limit=limit, offset=offset)


@router.get("/{address}", response_model=UserOut, summary="One user (admin)")
async def get_user(address: UserRefPath, platform: PlatformDep,
                   actor: Annotated[Actor, Depends(permit(Action.USERS_READ))]) -> UserOut:
    return UserOut.model_validate(await run_in_threadpool(platform.users.get, address))


@router.put("/{address}/role", response_model=RoleChanged, summary="Set a user's role (admin)")
async def set_role(address: UserRefPath, body: RoleIn, platform: PlatformDep,
                   actor: Annotated[Actor, Depends(permit(Action.USERS_WRITE))]) -> RoleChanged:
    view, before = await run_in_threadpool(platform.users.set_role, address, body.role)
    return RoleChanged.model_validate({**asdict(view), "previous_role": before})


@router.post("/{address}/revoke", response_model=UserOut, summary="End a user's tokens; ban or un-ban (admin)")
async def revoke(address: UserRefPath, platform: PlatformDep,
                 actor: Annotated[Actor, Depends(permit(Action.USERS_WRITE))],
                 body: Annotated[RevokeIn | None, Body()] = None) -> UserOut:
    ban = body.ban if body is not None else None
    return UserOut.model_validate(await run_in_threadpool(platform.users.revoke, address, ban))
