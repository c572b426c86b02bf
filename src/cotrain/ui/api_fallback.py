"""JSON answers for unknown API paths. NiceGUI is mounted at "/", so without this a wrong
`/api/...` URL (or a wrong method) would get the UI's HTML 404 page instead of the API's JSON."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def add_api_fallback(app: FastAPI, prefix: str = "/api") -> None:
    """Call after the API routers are included and before NiceGUI is mounted."""
    routes = list(app.router.routes)  # the API's own routes, without this fallback

    async def fallback(request: Request, path: str) -> JSONResponse:
        allowed = [
            method for method in METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
        ]
        if allowed:
            detail = f"Method {request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}."
            return JSONResponse({"detail": detail}, status_code=405, headers={"Allow": ", ".join(allowed)})
        return JSONResponse({"detail": f"No API endpoint at {request.url.path}. The endpoints are listed at /docs."},
                            status_code=404)

    app.add_api_route(prefix + "/{path:path}", fallback, methods=METHODS, include_in_schema=False)
