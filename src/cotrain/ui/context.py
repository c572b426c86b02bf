"""The server's `Platform` the pages use, set once when the UI is mounted."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cotrain.server.platform import Platform

_platform: Platform | None = None


def set_platform(platform: Platform) -> None:
    global _platform
    _platform = platform


def platform() -> Platform:
    if _platform is None:
        raise RuntimeError("The UI is not mounted: call cotrain.ui.mount(app) on the server's app first.")
    return _platform
