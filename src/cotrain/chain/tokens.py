"""Bearer tokens bound to a wallet address: `v1.<payload>.<signature>`, base64url, signed with the platform
key (Ed25519, aptos-sdk). Stateless, so every server replica can check them."""

from __future__ import annotations

import base64
import json
import time

from aptos_sdk import ed25519

PREFIX = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(key: ed25519.PrivateKey, address: str, ttl_s: int, now: float | None = None) -> tuple[str, float]:
    expires = (now or time.time()) + ttl_s
    payload = json.dumps({"addr": address, "exp": int(expires)}, separators=(",", ":")).encode()
    signed = PREFIX.encode() + b"." + payload
    return f"{PREFIX}.{_b64(payload)}.{_b64(key.sign(signed).data())}", float(int(expires))


def read_token(public_key: ed25519.PublicKey, token: str, now: float | None = None) -> str | None:
    """The address the token is bound to, or None when it is forged, malformed or expired."""
    try:
        prefix, payload_b64, sig_b64 = token.split(".")
        payload = _unb64(payload_b64)
        if prefix != PREFIX or not public_key.verify(prefix.encode() + b"." + payload,
                                                     ed25519.Signature(_unb64(sig_b64))):
            return None
        claims = json.loads(payload)
        if float(claims["exp"]) <= (now or time.time()):
            return None
        return str(claims["addr"])
    except Exception:
        return None
