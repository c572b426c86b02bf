"""A wallet injected into a Playwright page: `window.aptos` with connect() and signMessage() like Petra's,
whose key is held by the test (signing happens in Python with aptos-sdk via an exposed function)."""

from __future__ import annotations

from typing import Any

from .wallets import Wallet

INIT_SCRIPT = """
window.aptos = {
  connect: async () => JSON.parse(await window.__testWallet("account", "{}")),
  account: async () => JSON.parse(await window.__testWallet("account", "{}")),
  network: async () => "Testnet",
  signMessage: async (payload) => JSON.parse(await window.__testWallet("sign", JSON.stringify(payload))),
};
"""


def inject_wallet(page: Any, wallet: Wallet, origin: str, chain_id: int = 2) -> list[dict[str, Any]]:
    """Install the wallet on `page` (before any script runs); it reports `origin` as the application, as a
    real wallet reports the page's origin. Returns the list of signed responses."""
    import json

    signed: list[dict[str, Any]] = []

    def handle(kind: str, payload_json: str) -> str:
        if kind == "account":
            return json.dumps({"address": wallet.address, "publicKey": wallet.public_key})
        payload = json.loads(payload_json)
        out = wallet.sign_message(message=payload["message"], nonce=payload["nonce"], application=origin,
                                  chain_id=chain_id if payload.get("chainId") else None)
        response = {**out, "address": wallet.address, "application": origin, "chainId": chain_id,
                    "message": payload["message"], "nonce": payload["nonce"], "prefix": "APTOS"}
        signed.append(response)
        return json.dumps(response)

    page.expose_function("__testWallet", handle)
    page.add_init_script(INIT_SCRIPT)
    return signed
