"""The FastAPI application: `create_app()` (uvicorn factory: `cotrain.server.app:create_app`).

The routers of server/api/ are included under /api/v1 (wallet sign-in and rewards too); the UI
mounts itself on the returned app (NiceGUI's `ui.run_with(app)`) and reaches the services
through `app.state.platform`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError

from cotrain.chain.errors import RewardsUnavailable
from cotrain.server import log_redaction
from cotrain.server.api import audit as audit_api  # issue 11: audit log
from cotrain.server.api import hivemind, model_versions, rewards, sessions, system, tokens, wallet
from cotrain.server.api import users as users_api  # issue 11: roles
from cotrain.server.audit_middleware import AuditMiddleware  # issue 11: audit log
from cotrain.server.body_limit import BodyLimitMiddleware  # issue 11: limits on input
from cotrain.server.config_generator import SessionConfigError
from cotrain.server.disk_full import database_disk_full, file_disk_full  # issue 18: full disks
from cotrain.server.errors import ServiceError
from cotrain.server.http_metrics import HttpMetrics, HttpMetricsMiddleware
from cotrain.server.permissions import PermissionDenied
from cotrain.server.platform import Platform
from cotrain.server.rate_limits import RateLimiter  # issue 11: limits on input
from cotrain.server.request_context import RequestContextMiddleware, wrap_outermost  # issue 14: logs
from cotrain.server.transport_security import TransportSecurityMiddleware, https_everywhere  # issue 14: TLS
from cotrain.server.ws import router as ws_router

log = logging.getLogger(__name__)

DESCRIPTION = """CoTrain platform server: training sessions from creation to final model.

Mutating endpoints need `Authorization: Bearer <token>` (the admin token is printed on first
start and kept in `COTRAIN_HOME/admin-token`). Live progress: WebSocket `/ws`."""


def create_app(platform: Platform | None = None) -> FastAPI:
    platform = platform or Platform()
    log_redaction.install()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        try:
            yield
        finally:
            await platform.stop()

    app = FastAPI(title="CoTrain", version=importlib.metadata.version("cotrain"), description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.platform = platform
    app.state.http_metrics = HttpMetrics()
    # issue 11, limits on input: bodies over the limit get 413 before parsing (inside the metrics
    # middleware, which counts the 413s); rate limits are shared through Redis when REDIS_URL is set
    app.add_middleware(BodyLimitMiddleware, max_bytes=platform.settings.max_body_bytes)
    app.state.rate_limiter = RateLimiter.from_settings(platform.settings)
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.http_metrics)
    app.add_middleware(AuditMiddleware)  # issue 11: added last (outermost), so it also sees the limits' 413/429
    # issue 14: the request id, session and actor for the logs, and HSTS and Secure cookies over HTTPS, around
    # everything (the web UI's middlewares too)
    always_https = https_everywhere(platform.settings)
    wrap_outermost(app, lambda stack: RequestContextMiddleware(TransportSecurityMiddleware(stack, always_https)))

    api = APIRouter(prefix="/api/v1")
    for module in (sessions, hivemind, model_versions, tokens, system, users_api, audit_api, wallet, rewards):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(system.router, include_in_schema=False)  # /health and /metrics at the root too
    app.include_router(ws_router)

    @app.exception_handler(PermissionDenied)
    async def _permission_denied(_request: Request, exc: PermissionDenied) -> JSONResponse:
        if exc.anonymous:
            return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(RewardsUnavailable)
    async def _rewards_unavailable(_request: Request, exc: RewardsUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input, and JSON cannot carry Infinity/NaN back
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(DBAPIError)
    async def _database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if full := database_disk_full(exc, platform.settings.database_url):  # issue 18: 507, not 503
            return full
        if isinstance(exc, DataError):  # a value the database cannot store (validation should catch these first)
            return JSONResponse(
                {"detail": "A value in the request is out of range or contains characters that cannot be stored; "
                           "check its numbers and text."}, status_code=422)
        log.error("database error: %s", exc.__class__.__name__)
        return JSONResponse({"detail": "The database did not answer; try again in a moment."}, status_code=503)

    @app.exception_handler(OSError)
    async def _os_error(_request: Request, exc: OSError) -> JSONResponse:
        # issue 18: a full disk is 507 with a sentence, not a 500
        if full := file_disk_full(exc, platform.settings.layout.root):
            return full
        raise exc

    @app.exception_handler(SessionConfigError)
    async def _config_error(_request: Request, exc: SessionConfigError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    return app


def _finite(value: Any) -> Any:
    """`value` with every infinite or NaN float written as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value

