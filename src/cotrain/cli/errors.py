"""Turning expected failures into one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer

from cotrain.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Something the person running the command can fix; the message says how."""


def fail(message: str, code: int = 2) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def friendly_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        except UserError as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]
