"""The platform's Ed25519 keys, loaded from the environment or a 0600 key file — never from the DB or logs.

* Ledger key (signs every ledger entry and the sign-in tokens): `COTRAIN_LEDGER_KEY` (hex or AIP-80
  `ed25519-priv-0x...`), else `COTRAIN_HOME/keys/ledger.key`, created on first use with mode 0600.
* Treasury key (pays rewards with the `aptos` backend): `COTRAIN_TREASURY_KEY`, else the file named by
  `COTRAIN_TREASURY_KEY_FILE`. Never created automatically: it must hold funds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aptos_sdk import ed25519
from aptos_sdk.account import Account

from cotrain.chain.settings import ChainConfigError, ChainKeySettings
from cotrain.paths import cotrain_home


class KeyConfigError(Exception):
    """A key is missing, unreadable or too widely readable; the message says what to do."""


def _parse(value: str, where: str) -> ed25519.PrivateKey:
    try:
        return ed25519.PrivateKey.from_str(value.strip(), strict=False)
    except Exception:
        raise KeyConfigError(
            f"{where} does not hold an Ed25519 private key; put a 32-byte hex key "
            "(or an AIP-80 'ed25519-priv-0x...' string) there."
        ) from None


def _read_key_file(path: Path, what: str) -> ed25519.PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyConfigError(
            f"The {what} key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`."
        )
    return _parse(path.read_text(), f"The {what} key file {path}")


def load_wallet_key(path: Path) -> ed25519.PrivateKey:
    """A volunteer's wallet key from a 0600 file (`cotrain rewards bind`); it never leaves the machine."""
    return _read_key_file(path, "wallet")


def key_settings() -> ChainKeySettings:
    """The key variables of this process's environment; a bad one is a KeyConfigError."""
    try:
        return ChainKeySettings.from_env()
    except ChainConfigError as exc:
        raise KeyConfigError(str(exc)) from None


def ledger_key_path() -> Path:
    return cotrain_home() / "keys" / "ledger.key"


def load_ledger_key(create: bool = True) -> ed25519.PrivateKey:
    """The ledger signing key: env COTRAIN_LEDGER_KEY, else the key file (created once, mode 0600)."""
    env = key_settings().ledger_key
    if env is not None:
        return _parse(env.get_secret_value(), "COTRAIN_LEDGER_KEY")
    path = ledger_key_path()
    if path.exists():
        return _read_key_file(path, "ledger")
    if not create:
        raise KeyConfigError(
            f"No ledger key: set COTRAIN_LEDGER_KEY or restore {path} (the key that signed the ledger)."
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ed25519.PrivateKey.random()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    return key


def load_treasury_account() -> Account:
    """The account that pays rewards (aptos backend). Its address is derived from the key."""
    settings = key_settings()
    if settings.treasury_key is not None:
        key = _parse(settings.treasury_key.get_secret_value(), "COTRAIN_TREASURY_KEY")
    else:
        file = settings.treasury_key_file
        if file is None:
            raise KeyConfigError(
                "The aptos payout backend needs the treasury key: set COTRAIN_TREASURY_KEY_FILE to a "
                "file (mode 600) holding the treasury account's Ed25519 private key, or COTRAIN_TREASURY_KEY."
            )
        path = Path(file).expanduser()
        if not path.exists():
            raise KeyConfigError(f"COTRAIN_TREASURY_KEY_FILE={path} does not exist; point it at the treasury key file.")
        key = _read_key_file(path, "treasury")
    return Account.load_key(key.hex())
