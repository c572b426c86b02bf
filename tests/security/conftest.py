"""Fixtures for the security tests: real `cotrain up` processes (tests/server's fixtures), and the
three kinds of caller an attacker can be: anonymous, a member with a fresh Aptos key (wallet
sign-in makes anyone a member), and a member API token."""

from __future__ import annotations

import httpx

from tests.chain.wallets import Wallet
from tests.server.conftest import (  # noqa: F401 (fixtures re-exported for this folder)
    ADMIN_TOKEN,
    TINY,
    ServerProcess,
    WSCollector,
    pg_url,
    redis_url,
    reference_session,
    server_env,
    servers,
)


def wallet_sign_in(server: ServerProcess, wallet: Wallet | None = None) -> tuple[str, Wallet]:
    """Sign in as a stranger with a freshly generated Aptos key, exactly as a browser wallet would;
    returns the wallet token and the wallet."""
    wallet = wallet or Wallet.create()
    with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
        nonce = client.post("/auth/nonce", json={"address": wallet.address})
        assert nonce.status_code == 200, nonce.text
        challenge = nonce.json()
        signed = wallet.sign_message(message=challenge["message"], nonce=challenge["nonce"],
                                     application=challenge["application"], chain_id=challenge["chainId"])
        verified = client.post("/auth/verify", json={"address": wallet.address, "publicKey": wallet.public_key,
                                                     **signed})
        assert verified.status_code == 200, verified.text
        return verified.json()["token"], wallet


def api_token(server: ServerProcess, role: str = "member", name: str = "tester") -> str:
    """A new API token of `role`, created by the admin."""
    with server.client() as admin:
        created = admin.post("/auth/tokens", json={"name": name, "role": role})
        assert created.status_code == 201, created.text
        return created.json()["token"]
