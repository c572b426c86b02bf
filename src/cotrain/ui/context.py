"""The server's `Platform` the pages use, set once when the UI is mounted."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cotrain.server.platform import Platform

_platform: Platform | None = None
_app: FastAPI | None = None


def set_app(app: FastAPI) -> None:
    """The server's app (its `state` holds the platform, whose services the pages call)."""
    global _platform, _app
    _app, _platform = app, app.state.platform


def server_app() -> FastAPI:
    if _app is None:
        raise RuntimeError("The UI is not mounted: call cotrain.ui.mount(app) on the server's app first.")
    return _app


def platform() -> Platform:
    if _platform is None:
        raise RuntimeError("The UI is not mounted: call cotrain.ui.mount(app) on the server's app first.")
    return _platform
