"""Per-browser preferences kept in NiceGUI's user storage: language, theme and the API token
the person signed in with (sealed: `cotrain.ui.sealed`, never in plain text in the storage file)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nicegui import app

from cotrain.ui import sealed
from cotrain.ui.context import platform

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

LANGUAGES = {"en": "English", "zh-CN": "简体中文"}


def language() -> str:
    value = app.storage.user.get("lang", "en")
    return value if value in LANGUAGES else "en"


def set_language(value: str) -> None:
    app.storage.user["lang"] = value if value in LANGUAGES else "en"


def dark() -> bool | None:
    """True/False once chosen; None (the default) follows the operating system's setting."""
    value = app.storage.user.get("dark")
    return None if value is None else bool(value)


def set_dark(value: bool) -> None:
    app.storage.user["dark"] = bool(value)


def token() -> str | None:
    stored = app.storage.user.get("token")
    if not stored or not isinstance(stored, str):
        return None
    if not sealed.is_sealed(stored):  # kept in plain text by an older version: seal it now
        set_token(stored)
        return stored
    value = sealed.unseal(stored)
    if value is None:  # sealed under another UI secret, or altered: signed out
        set_token(None)
    return value


def set_token(value: str | None) -> None:
    if value:
        app.storage.user["token"] = sealed.seal(value)
    else:
        app.storage.user.pop("token", None)


def actor_for(value: str | None) -> Actor | None:
    """The API token's owner, or None when it is missing, unknown or revoked (blocking: DB)."""
    return platform().tokens.authenticate(value) if value else None
