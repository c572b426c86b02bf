"""Short-lived signed download links for the web UI, so no bearer token ever sits in a link that
outlives the page: `?expires=UNIX&actor=ID&sig=HEX`, an HMAC-SHA256 over the path, the expiry and
the actor with the server's URL secret (`COTRAIN_URL_SECRET`, else COTRAIN_HOME/url-secret, mode
600, shared by replicas through the home they share). The actor is looked up again when the link
is used, so a revoked or demoted user's links die with their token."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

from pydantic import SecretStr

DEFAULT_TTL_S = 300
SECRET_FILE = "url-secret"


def load_secret(home: Path, configured: SecretStr | None = None) -> bytes:
    """The URL-signing secret: `configured` (COTRAIN_URL_SECRET, `Settings.url_secret`), else the
    home's url-secret file (created once)."""
    if configured is not None:
        return configured.get_secret_value().encode()
    path = home / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another replica made it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def _mac(secret: bytes, path: str, expires: int, actor_id: int) -> str:
    return hmac.new(secret, f"{path}\n{expires}\n{actor_id}".encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, path: str, actor_id: int, ttl_s: int = DEFAULT_TTL_S, now: float | None = None) -> str:
    """`path` with the query that lets `actor_id` fetch it until `ttl_s` from now."""
    expires = int((now or time.time()) + ttl_s)
    query = urlencode({"expires": expires, "actor": actor_id, "sig": _mac(secret, path, expires, actor_id)})
    return f"{path}?{query}"


def verify(secret: bytes, path: str, expires: int, actor_id: int, sig: str, now: float | None = None) -> bool:
    if expires < (now or time.time()):
        return False
    return hmac.compare_digest(_mac(secret, path, expires, actor_id), sig)
