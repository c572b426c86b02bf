"""Mounts the NiceGUI pages on the server's FastAPI app."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fastapi import FastAPI
from pydantic import SecretStr

from cotrain.ui import sealed
from cotrain.ui.context import set_app
from cotrain.ui.theme import FAVICON

_mounted = False


def _storage_secret(home: Path, configured: SecretStr | None) -> str:
    """`configured` (COTRAIN_UI_SECRET, `Settings.ui_secret`), else a random secret kept in
    COTRAIN_HOME/ui-secret (mode 600), so browser preferences survive a restart."""
    if configured is not None:
        return configured.get_secret_value()
    path = home / "ui-secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def mount(app: FastAPI) -> None:
    """Add the web UI to `app` (made by `cotrain.server.app.create_app`). NiceGUI is one per
    process, so this can be called once."""
    global _mounted
    if _mounted:
        raise RuntimeError("The web UI is already mounted in this process.")
    from nicegui import ui
    from nicegui.storage import Storage

    platform = app.state.platform
    set_app(app)
    home = platform.settings.layout.root
    storage = (home / "ui-storage").resolve()  # per-browser preferences and sign-in, not in the working directory
    storage.mkdir(mode=0o700, parents=True, exist_ok=True)
    storage.chmod(0o700)  # it holds the (sealed) API tokens people signed in with
    Storage.path = storage
    secret = _storage_secret(home, platform.settings.ui_secret)
    sealed.set_secret(secret)  # tokens in the storage files are sealed with a key derived from it

    from cotrain.ui.api_fallback import add_api_fallback
    from cotrain.ui.pages import register_pages

    add_api_fallback(app)

    register_pages()
    ui.run_with(
        app,
        title="CoTrain",
        favicon=FAVICON,
        storage_secret=secret,
        show_welcome_message=False,
        reconnect_timeout=10.0,
    )
    _mounted = True
