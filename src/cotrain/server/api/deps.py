"""FastAPI dependencies: the platform object and the caller's identity.

They are `async def`: FastAPI runs a plain `def` dependency in its thread pool, and a thread hop
per dependency cost more than the request itself. Only a token lookup touches the database, and
that one goes to the pool explicitly.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cotrain.server import signed_urls
from cotrain.server.auth import Actor
from cotrain.server.platform import Platform
from cotrain.server.request_context import note_actor

bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer ct_...`")


async def get_platform(request: Request) -> Platform:
    return request.app.state.platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def _link_actor(platform: Platform, request: Request) -> Actor | None:
    """The actor of a signed download link (signed_urls) on a GET, or None when there is none."""
    query = request.query_params
    if request.method != "GET" or "sig" not in query:
        return None
    try:
        expires, actor_id, sig = int(query["expires"]), int(query["actor"]), query["sig"]
    except (KeyError, ValueError):
        expires, actor_id, sig = 0, 0, ""
    if not signed_urls.verify(platform.url_secret, request.url.path, expires, actor_id, sig):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "This download link is invalid or has expired; "
                            "open the page again for a fresh link.")
    issued = expires - signed_urls.DEFAULT_TTL_S  # links made before an admin's revoke die with it
    actor = platform.tokens.link_actor(actor_id, issued)
    if actor is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "The user this link was made for is no longer "
                            "signed in; open the page again.")
    return actor


async def optional_actor(
    platform: PlatformDep, request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Actor | None:
    if credentials is None:
        if "sig" in request.query_params:
            return await run_in_threadpool(_link_actor, platform, request)
        return None
    actor = await run_in_threadpool(platform.tokens.authenticate, credentials.credentials)
    if actor is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "This API token is not valid (unknown or revoked). Use the admin token from "
            "COTRAIN_HOME/admin-token or ask an admin for a new one.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    note_actor(actor.label)  # issue 14: the logs of this request name its actor
    return actor


async def required_actor(actor: Annotated[Actor | None, Depends(optional_actor)]) -> Actor:
    if actor is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "This request changes data and needs an API token: send `Authorization: Bearer <token>` "
            "(the admin token is in COTRAIN_HOME/admin-token).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return actor


MaybeActor = Annotated[Actor | None, Depends(optional_actor)]
RequiredActor = Annotated[Actor, Depends(required_actor)]


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SessionId = Annotated[str, Path(pattern=ID_PATTERN, description="A session id (as returned on create).")]
DbId = Annotated[int, Path(ge=1, le=2**31 - 1)]

# For endpoints that read with or without a token (a token may show more, e.g. private sessions):
# FastAPI appends this to the operation's security, giving `[{"HTTPBearer": []}, {}]` (optional).
OPTIONAL_AUTH: dict = {"security": [{}]}
