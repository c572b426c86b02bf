"""Wallet sign-in from a terminal: the AIP-62 message a browser wallet would sign, signed with an
Aptos key read from a 0600 file (the key never leaves this machine; only the signature is sent).
Needs aptos-sdk, imported only here."""

from __future__ import annotations

from pathlib import Path

import httpx

from cotrain.client.core import base_urls
from cotrain.client.errors import CotrainError, error_from_response, unreachable


def sign_in_with_key_file(server: str, key_file: Path, timeout: float = 30.0) -> tuple[str, str]:
    """(wallet token, address) after POST /auth/nonce and /auth/verify with the key in `key_file`."""
    from aptos_sdk.account_address import AccountAddress

    from cotrain.chain.keys import KeyConfigError, load_wallet_key

    try:
        key = load_wallet_key(Path(key_file))
    except FileNotFoundError:
        raise CotrainError(None, f"No key file {key_file}: give the file holding the wallet's Ed25519 private "
                                 "key (hex, or AIP-80 'ed25519-priv-0x...'), mode 600.") from None
    except KeyConfigError as exc:
        raise CotrainError(None, str(exc)) from None
    public_key = key.public_key()
    address = str(AccountAddress.from_key(public_key))
    api, _ = base_urls(server)
    try:
        with httpx.Client(base_url=api, timeout=timeout) as http:
            nonce = http.post("/auth/nonce", json={"address": address})
            if nonce.is_error:
                raise error_from_response(nonce)
            challenge = nonce.json()
            full = aip62_message(address, challenge["application"], challenge.get("chainId"),
                                 challenge["message"], challenge["nonce"])
            verified = http.post("/auth/verify", json={"address": address, "publicKey": str(public_key),
                                                       "fullMessage": full, "signature": str(key.sign(full.encode()))})
            if verified.is_error:
                raise error_from_response(verified)
    except httpx.TransportError as exc:
        raise unreachable(server, exc) from None
    answer = verified.json()
    return answer["token"], answer["address"]


def aip62_message(address: str, application: str, chain_id: int | None, message: str, nonce: str) -> str:
    """The full message an AIP-62 wallet signs for `signMessage` with address, application and chain id."""
    lines = [f"address: {address}", f"application: {application}"]
    if chain_id:
        lines.append(f"chainId: {chain_id}")
    lines += [f"message: {message}", f"nonce: {nonce}"]
    return "APTOS\n" + "\n".join(lines)
