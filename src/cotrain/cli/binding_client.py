"""Bind a peer to a wallet from the volunteer's machine: both signatures are made here, from the peer's
identity file and the wallet's key file (neither key leaves the machine), and sent to the server."""

from __future__ import annotations

from pathlib import Path

from aptos_sdk import ed25519

from cotrain.chain.bindings import SignedBinding
from cotrain.cli.errors import UserError


def load_wallet(key_file: Path) -> ed25519.PrivateKey:
    """The wallet's key; a UserError that says what to do when the file is missing, unreadable or open to others."""
    from cotrain.chain.keys import KeyConfigError, load_wallet_key

    try:
        return load_wallet_key(key_file)
    except KeyConfigError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"Could not read the wallet key file {key_file} ({exc.strerror}); give the file (mode 600) "
                        "holding the wallet's Ed25519 private key.") from None


def sign_from_files(session_id: str, identity_file: Path, wallet_key_file: Path) -> SignedBinding:
    """Both halves of the binding of the peer whose identity is `identity_file` to the wallet of
    `wallet_key_file`; a UserError when either file cannot be read."""
    from cotrain.chain.bindings import sign_binding
    from cotrain.p2p.identity import load_identity

    try:
        peer_key = load_identity(identity_file)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UserError(f"Could not read the peer's identity file {identity_file} ({why}); give the p2p-identity.key "
                        "beside the peer's checkpoints (models/checkpoints/SESSION/ under its CoTrain home).") from None
    return sign_binding(peer_key, load_wallet(wallet_key_file), session_id)


def post_binding(server: str, binding: SignedBinding) -> None:
    """POST /api/v1/rewards/bindings; a UserError with the server's sentence when it refuses."""
    import httpx

    try:
        answer = httpx.post(server.rstrip("/") + "/api/v1/rewards/bindings", json=binding.body(), timeout=30)
    except httpx.HTTPError as exc:
        raise UserError(f"The server at {server} did not answer ({exc}); check --server.") from None
    if answer.status_code != 201:
        detail = answer.json().get("detail") if answer.headers.get("content-type", "").startswith(
            "application/json") else answer.text
        raise UserError(f"The server refused the binding ({answer.status_code}): {detail}")
