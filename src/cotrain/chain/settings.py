"""Chain settings read from the environment (DESIGN.md: production = Aptos node via APTOS_NODE_URL)."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Chain ids of the public networks (devnet's changes on every reset: set APTOS_CHAIN_ID for it).
NETWORK_CHAIN_IDS = {"mainnet": 1, "testnet": 2, "local": 4}
PAYOUT_BACKENDS = ("local", "aptos")


class ChainConfigError(ValueError):
    """A chain setting is missing or wrong; the message says which variable to set and how."""


@dataclass(frozen=True)
class ChainSettings:
    network: str = "testnet"
    chain_id: int | None = 2
    node_url: str | None = None
    payout_backend: str = "local"
    origin: str | None = None
    nonce_ttl_s: int = 300
    token_ttl_s: int = 12 * 3600

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ChainSettings:
        env = dict(os.environ if env is None else env)
        network = env.get("APTOS_NETWORK", "testnet").strip().lower() or "testnet"
        raw_chain_id = env.get("APTOS_CHAIN_ID", "").strip()
        if raw_chain_id:
            if not raw_chain_id.isdigit() or not 0 < int(raw_chain_id) < 256:
                raise ChainConfigError(
                    f"APTOS_CHAIN_ID={raw_chain_id!r} is not a chain id; set it to a number from 1 to 255 "
                    "(1 mainnet, 2 testnet, 4 local) or unset it."
                )
            chain_id: int | None = int(raw_chain_id)
        else:
            chain_id = NETWORK_CHAIN_IDS.get(network)
        backend = env.get("COTRAIN_PAYOUT_BACKEND", "local").strip().lower() or "local"
        if backend not in PAYOUT_BACKENDS:
            raise ChainConfigError(
                f"COTRAIN_PAYOUT_BACKEND={backend!r} is unknown; use 'local' (record payouts as due) "
                "or 'aptos' (send them with APTOS_NODE_URL and a treasury key)."
            )
        node_url = (env.get("APTOS_NODE_URL") or "").strip().rstrip("/") or None
        if backend == "aptos" and not node_url:
            raise ChainConfigError(
                "COTRAIN_PAYOUT_BACKEND=aptos needs APTOS_NODE_URL, e.g. "
                "https://fullnode.testnet.aptoslabs.com/v1."
            )
        origin = (env.get("COTRAIN_PUBLIC_ORIGIN") or "").strip().rstrip("/") or None
        return cls(
            network=network,
            chain_id=chain_id,
            node_url=node_url,
            payout_backend=backend,
            origin=origin,
        )

    def explorer_txn_url(self, tx_hash: str) -> str | None:
        """A link to the transaction on the Aptos explorer, or None for a local network."""
        if self.network not in ("mainnet", "testnet", "devnet"):
            return None
        return f"https://explorer.aptoslabs.com/txn/{tx_hash}?network={self.network}"
