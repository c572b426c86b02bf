"""uvicorn factory for the server with the web UI: `uvicorn cotrain.ui.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from cotrain.server.app import create_app as create_server_app
from cotrain.ui.mount import mount


def create_app() -> FastAPI:
    app = create_server_app()
    mount(app)
    return app
