"""Chain settings read from the environment (production: an Aptos node at APTOS_NODE_URL)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

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
        origin = public_origin(env.get("COTRAIN_PUBLIC_ORIGIN") or "")
        return cls(
            network=network,
            chain_id=chain_id,
            node_url=node_url,
            payout_backend=backend,
            origin=origin,
        )

    def accepts_application(self, application: str) -> bool:
        """Whether a wallet's signed `application` is this server: exactly COTRAIN_PUBLIC_ORIGIN, or,
        with none configured, a loopback origin. Never derived from the request (its Host header)."""
        if application.endswith("/"):
            application = application[:-1]
        if self.origin is not None:
            return application == self.origin
        return is_loopback_origin(application)

    def sign_in_notice(self) -> str:
        """The start-up line that says which origin wallets may sign in for."""
        if self.origin is not None:
            return f"Wallet sign-in accepts messages signed for {self.origin} only (COTRAIN_PUBLIC_ORIGIN)."
        return ("Wallet sign-in accepts loopback origins only (http(s)://127.0.0.1, localhost or [::1], any port), "
                "as COTRAIN_PUBLIC_ORIGIN is not set; set it to the address people open, e.g. "
                "COTRAIN_PUBLIC_ORIGIN=https://cotrain.example, to let wallets sign in from elsewhere.")

    def explorer_txn_url(self, tx_hash: str) -> str | None:
        """A link to the transaction on the Aptos explorer, or None for a local network."""
        if self.network not in ("mainnet", "testnet", "devnet"):
            return None
        return f"https://explorer.aptoslabs.com/txn/{tx_hash}?network={self.network}"


# ---- origins (wallet sign-in's `application`) ----------------------------------------------------

def public_origin(value: str) -> str | None:
    """COTRAIN_PUBLIC_ORIGIN checked and in the form browsers report it (scheme and host in lower
    case, no trailing slash), or None when unset."""
    value = value.strip()
    if value.endswith("/"):
        value = value[:-1]
    if not value:
        return None
    try:
        if not value.isprintable() or " " in value:
            raise ValueError
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username is not None or "@" in parts.netloc):
        raise ChainConfigError(
            f"COTRAIN_PUBLIC_ORIGIN={value!r} is not an origin; set it to the scheme, host and (if not the "
            "default) port people open the server at, with no path, e.g. https://cotrain.example."
        )
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    if port == {"http": 80, "https": 443}[scheme]:
        port = None  # browsers leave the default port out of an origin
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def is_loopback_origin(value: str) -> bool:
    """http(s)://127.0.0.1, localhost or [::1], with any port and nothing else."""
    if not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return False
    host = parts.netloc if port is None else parts.netloc.rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")
