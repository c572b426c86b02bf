"""Bind a peer to a wallet from the volunteer's machine: both signatures are made here, from the peer's
identity file and the wallet's key file (neither key leaves the machine), and sent to the server. Or only the
peer's half, as a token for the Rewards page, where a browser wallet signs the other."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aptos_sdk import ed25519

from cotrain.chain.bindings import SignedBinding
from cotrain.cli.errors import UserError

if TYPE_CHECKING:
    from hivemind.utils.crypto import RSAPrivateKey


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


def load_peer_key(identity_file: Path) -> RSAPrivateKey:
    """The peer's key; a UserError that says where it usually is when the file cannot be read."""
    from cotrain.p2p.identity import load_identity

    try:
        return load_identity(identity_file)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UserError(f"Could not read the peer's identity file {identity_file} ({why}); give the p2p-identity.key "
                        "beside the peer's checkpoints (models/checkpoints/SESSION/ under its CoTrain home).") from None


def sign_from_files(session_id: str, identity_file: Path, wallet_key_file: Path) -> SignedBinding:
    """Both halves of the binding of the peer whose identity is `identity_file` to the wallet of
    `wallet_key_file`; a UserError when either file cannot be read."""
    from cotrain.chain.bindings import sign_binding

    return sign_binding(load_peer_key(identity_file), load_wallet(wallet_key_file), session_id)


def peer_half_token_from_file(session_id: str, identity_file: Path, address: str) -> str:
    """The peer's half of its binding to `address` as the token the Rewards page takes."""
    from cotrain.chain.binding_token import peer_half_token
    from cotrain.chain.bindings import sign_peer_half
    from cotrain.chain.signin import SignInError, normalize_address

    try:
        address = normalize_address(address)
    except SignInError as exc:
        raise UserError(str(exc)) from None
    return peer_half_token(session_id, address, sign_peer_half(load_peer_key(identity_file), session_id, address))


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
