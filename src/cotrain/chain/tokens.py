"""Bearer tokens bound to a wallet address: `v1.<payload>.<signature>`, base64url, signed with the platform
key (Ed25519, aptos-sdk). Stateless to check, so every server replica can; each carries its own id
(`jti`) and issue time, which the server's revocation (sign-out, an admin's revoke) is checked
against in `cotrain.server.auth.authenticate`."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass

from aptos_sdk import ed25519

PREFIX = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    address: str
    issued_at: float
    expires_at: float
    token_id: str


def issue_token(key: ed25519.PrivateKey, address: str, ttl_s: int, now: float | None = None) -> tuple[str, float]:
    issued = now or time.time()
    expires = issued + ttl_s
    claims = {"addr": address, "iat": issued, "exp": int(expires), "jti": secrets.token_hex(16)}
    payload = json.dumps(claims, separators=(",", ":")).encode()
    signed = PREFIX.encode() + b"." + payload
    return f"{PREFIX}.{_b64(payload)}.{_b64(key.sign(signed).data())}", float(int(expires))


def read_token(public_key: ed25519.PublicKey, token: str, now: float | None = None) -> str | None:
    """The address the token is bound to, or None when it is forged, malformed or expired."""
    claims = read_claims(public_key, token, now)
    return claims.address if claims else None


def read_claims(public_key: ed25519.PublicKey, token: str, now: float | None = None) -> TokenClaims | None:
    """The token's claims, or None when it is forged, malformed, expired or from before token ids."""
    try:
        prefix, payload_b64, sig_b64 = token.split(".")
        payload = _unb64(payload_b64)
        if prefix != PREFIX or not public_key.verify(prefix.encode() + b"." + payload,
                                                     ed25519.Signature(_unb64(sig_b64))):
            return None
        claims = json.loads(payload)
        if float(claims["exp"]) <= (now or time.time()):
            return None
        return TokenClaims(str(claims["addr"]), float(claims["iat"]), float(claims["exp"]), str(claims["jti"]))
    except Exception:
        return None
