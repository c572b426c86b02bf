"""The one exception the client raises: what the server (or the network) said, as a sentence."""

from __future__ import annotations

import json
from typing import Any

import httpx


class CotrainError(Exception):
    """A refused or failed request. `status` is the HTTP status (None when the server could not be
    reached or the live stream was lost), `message` the server's sentence, `detail` its raw
    `detail` (a list of field errors for 422), `retry_after` the seconds a 429 asks to wait."""

    def __init__(self, status: int | None, message: str, detail: Any = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"CotrainError(status={self.status!r}, message={self.message!r})"


def error_from_response(response: httpx.Response) -> CotrainError:
    """The server answers errors as `{"detail": ...}`: a sentence, a list of field errors (422), or
    `{"reason", "message"}` (wallet sign-in)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    message = describe_detail(detail) if detail is not None else (
        f"The server answered {response.status_code} {response.reason_phrase}"
        + (f": {response.text.strip()[:300]}" if response.text.strip() else ".")
    )
    retry_after = None
    if "retry-after" in response.headers:
        try:
            retry_after = float(response.headers["retry-after"])
        except ValueError:
            retry_after = None
    return CotrainError(response.status_code, message, detail, retry_after)


def describe_detail(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        return detail["message"]
    if isinstance(detail, list):
        return "; ".join(_field_error(item) for item in detail)
    return json.dumps(detail)


def _field_error(item: Any) -> str:
    """"trainingConfig.batchSize: Input should be ..." (the server's own sentence when it names the field)."""
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", []) if part != "body"]
    message = str(item.get("msg", ""))
    field = ".".join(loc)
    if not field or field in message or (loc and loc[-1] in message and "." in message.split(" ", 1)[0]):
        return message
    return f"{field}: {message}"


def unreachable(url: str, exc: Exception) -> CotrainError:
    return CotrainError(None, f"Could not reach the CoTrain server at {url} ({exc.__class__.__name__}: {exc}). "
                              "Check --server (or COTRAIN_SERVER) and that the server is running.")
