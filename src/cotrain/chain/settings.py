"""Chain settings, read from the environment with pydantic-settings (`ChainSettings()`;
production: an Aptos node at APTOS_NODE_URL). Each field's description documents its variable;
the README's table is generated from them (`cotrain.server.env_reference`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cotrain.config.env_settings import CommaList, EnvSettings, env_field

# Chain ids of the public networks (devnet's changes on every reset: set APTOS_CHAIN_ID for it).
NETWORK_CHAIN_IDS = {"mainnet": 1, "testnet": 2, "local": 4}
MAX_CHALLENGE_WINDOW_S = 30 * 24 * 3600  # COTRAIN_CHALLENGE_WINDOW's upper bound (the server looks this far back)
PAYOUT_BACKENDS = ("local", "aptos")


class ChainConfigError(ValueError):
    """A chain setting is missing or wrong; the message says which variable to set and how."""


class ChainKeySettings(EnvSettings):
    """The platform's keys and the treasury's address, read where the keys are loaded (`chain/keys.py`,
    `chain/runtime.py`, `chain/treasury.py`), apart from `ChainSettings`: a key loads whatever the
    other chain variables say. The keys are secret: a training run never inherits them."""

    model_config = SettingsConfigDict(frozen=True)
    error: ClassVar[type[ValueError]] = ChainConfigError

    treasury_key_file: Path | None = env_field(
        "COTRAIN_TREASURY_KEY_FILE", None,
        "file (mode 600) holding the paying account's Ed25519 key (`aptos` payouts); never stored in the DB",
        shown="unset", secret=True)
    treasury_key: SecretStr | None = env_field(
        "COTRAIN_TREASURY_KEY", None, "the paying account's Ed25519 key itself, instead of the file",
        shown="unset", secret=True)
    treasury_address: str | None = env_field(
        "COTRAIN_TREASURY_ADDRESS", None,
        "the treasury's `0x...` address, for a server that checks reward pools but does not hold the key",
        shown="the key's address")
    ledger_key: SecretStr | None = env_field(
        "COTRAIN_LEDGER_KEY", None,
        "the ledger signing key; else `COTRAIN_HOME/keys/ledger.key`, created on first use (mode 600): back it up",
        shown="the key file", secret=True)
    ledger_trusted_keys: CommaList = env_field(
        "COTRAIN_LEDGER_TRUSTED_KEYS", list,
        "earlier ledger public keys (comma separated) after a key rotation", shown="none")


class ChainSettings(EnvSettings):
    """The chain's variables but its keys' (`ChainKeySettings`)."""

    model_config = SettingsConfigDict(frozen=True)
    error: ClassVar[type[ValueError]] = ChainConfigError

    node_url: str | None = env_field(
        "APTOS_NODE_URL", None,
        "fullnode REST URL; required for `aptos` payouts, enables on-chain key checks at sign-in", shown="unset")
    network: str = env_field("APTOS_NETWORK", "testnet", "`mainnet`, `testnet`, `devnet` or `local`")
    chain_id: int | None = env_field(
        "APTOS_CHAIN_ID", None, "overrides the network's chain id (1 to 255)", shown="the network's")
    payout_backend: str = env_field(
        "COTRAIN_PAYOUT_BACKEND", "local",
        "`local` (payouts are recorded as due, nothing is sent) or `aptos` (sent with `aptos-sdk`)")
    origin: str | None = env_field(
        "COTRAIN_PUBLIC_ORIGIN", None, "the origin wallets see (set it behind a reverse proxy)",
        shown="loopback origins only")
    challenge_window_s: int = env_field(
        "COTRAIN_CHALLENGE_WINDOW", 86_400,
        "seconds after a rewarded session completes before it is settled and paid (24 h; `0`: at once); a "
        "failed spot check recorded meanwhile still voids that peer's credit", shown="`86400` (24 h)")
    nonce_ttl_s: ClassVar[int] = 300
    token_ttl_s: ClassVar[int] = 12 * 3600

    @field_validator("network", "payout_backend", mode="before")
    @classmethod
    def _lower(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            return value.strip().lower() or cls.model_fields[str(info.field_name)].default
        return value

    @field_validator("chain_id", mode="before")
    @classmethod
    def _chain_id(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        raw = value.strip()
        if not raw:
            return None
        if not raw.isdigit() or not 0 < int(raw) < 256:
            raise ChainConfigError(
                f"APTOS_CHAIN_ID={raw!r} is not a chain id; set it to a number from 1 to 255 "
                "(1 mainnet, 2 testnet, 4 local) or unset it."
            )
        return int(raw)

    @field_validator("payout_backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        if backend not in PAYOUT_BACKENDS:
            raise ChainConfigError(
                f"COTRAIN_PAYOUT_BACKEND={backend!r} is unknown; use 'local' (record payouts as due) "
                "or 'aptos' (send them with APTOS_NODE_URL and a treasury key)."
            )
        return backend

    @field_validator("challenge_window_s")
    @classmethod
    def _window(cls, seconds: int) -> int:
        if not 0 <= seconds <= MAX_CHALLENGE_WINDOW_S:
            raise ChainConfigError(f"COTRAIN_CHALLENGE_WINDOW={seconds} is not in 0..{MAX_CHALLENGE_WINDOW_S} "
                                   "(30 days); set it to the seconds a completed session waits before it is "
                                   "settled (86400 for a day, 0 for none) or unset it.")
        return seconds

    @field_validator("node_url", mode="before")
    @classmethod
    def _node_url(cls, value: Any) -> Any:
        return (value.strip().rstrip("/") or None) if isinstance(value, str) else value

    @field_validator("origin", mode="before")
    @classmethod
    def _origin(cls, value: Any) -> Any:
        return public_origin(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _network_and_backend(self) -> Self:
        """The chain id defaults to the network's; paying on chain needs a node."""
        if self.chain_id is None:
            object.__setattr__(self, "chain_id", NETWORK_CHAIN_IDS.get(self.network))
        if self.payout_backend == "aptos" and not self.node_url:
            raise ChainConfigError(
                "COTRAIN_PAYOUT_BACKEND=aptos needs APTOS_NODE_URL, e.g. "
                "https://fullnode.testnet.aptoslabs.com/v1."
            )
        return self

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
