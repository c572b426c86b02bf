"""Blocking service calls from a page's event loop, for calls whose result is never None."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from nicegui import run

P = ParamSpec("P")
R = TypeVar("R")


async def run_blocking(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`call(*args, **kwargs)` on NiceGUI's I/O thread pool. NiceGUI's `run.io_bound` answers None instead of
    the result when the app is stopping or the call was cancelled; that ends the page handler here with
    `CancelledError` (what NiceGUI 4.0 will do itself) instead of handing None on."""
    result = await run.io_bound(call, *args, **kwargs)
    if result is None:
        raise asyncio.CancelledError
    return result
