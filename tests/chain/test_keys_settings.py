"""Keys come from the environment or an owner-only file, and settings errors say which variable to fix."""

from __future__ import annotations

import pytest
from aptos_sdk import ed25519

from cotrain.chain.keys import KeyConfigError, ledger_key_path, load_ledger_key, load_treasury_account
from cotrain.chain.settings import ChainConfigError, ChainSettings


def test_ledger_key_file_is_created_once_with_mode_600(tmp_path, monkeypatch):
    monkeypatch.setenv("COTRAIN_HOME", str(tmp_path))
    monkeypatch.delenv("COTRAIN_LEDGER_KEY", raising=False)
    with pytest.raises(KeyConfigError, match="COTRAIN_LEDGER_KEY"):
        load_ledger_key(create=False)
    key = load_ledger_key()
    assert load_ledger_key() == key
    assert ledger_key_path().stat().st_mode & 0o777 == 0o600
    ledger_key_path().chmod(0o644)
    with pytest.raises(KeyConfigError, match="chmod 600"):
        load_ledger_key()


def test_env_keys_and_treasury(tmp_path, monkeypatch):
    key = ed25519.PrivateKey.random()
    monkeypatch.setenv("COTRAIN_LEDGER_KEY", key.aip80())
    assert load_ledger_key() == key
    monkeypatch.delenv("COTRAIN_TREASURY_KEY", raising=False)
    monkeypatch.delenv("COTRAIN_TREASURY_KEY_FILE", raising=False)
    with pytest.raises(KeyConfigError, match="COTRAIN_TREASURY_KEY_FILE"):
        load_treasury_account()
    path = tmp_path / "t.key"
    path.write_text(key.hex())
    path.chmod(0o600)
    monkeypatch.setenv("COTRAIN_TREASURY_KEY_FILE", str(path))
    assert load_treasury_account().private_key == key
    monkeypatch.setenv("COTRAIN_LEDGER_KEY", "not-a-key")
    with pytest.raises(KeyConfigError) as err:
        load_ledger_key()
    assert "not-a-key" not in str(err.value)  # secrets are never echoed


def chain_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> ChainSettings:
    """ChainSettings read from an environment where, of the chain's variables, only `env` is set."""
    for name in ChainSettings.variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ChainSettings()


def test_settings_errors_name_the_variable(monkeypatch):
    assert chain_settings(monkeypatch).payout_backend == "local"
    with pytest.raises(ChainConfigError, match="APTOS_NODE_URL"):
        chain_settings(monkeypatch, COTRAIN_PAYOUT_BACKEND="aptos")
    with pytest.raises(ChainConfigError, match="COTRAIN_PAYOUT_BACKEND"):
        chain_settings(monkeypatch, COTRAIN_PAYOUT_BACKEND="paypal")
    with pytest.raises(ChainConfigError, match="APTOS_CHAIN_ID"):
        chain_settings(monkeypatch, APTOS_CHAIN_ID="x")
    s = chain_settings(monkeypatch, APTOS_NETWORK="mainnet")
    assert s.chain_id == 1 and s.explorer_txn_url("0xab") == "https://explorer.aptoslabs.com/txn/0xab?network=mainnet"


def test_rotated_ledger_key_still_verifies_old_entries(tmp_path, monkeypatch):
    from cotrain.chain.runtime import platform_ledger

    old, new = ed25519.PrivateKey.random(), ed25519.PrivateKey.random()
    monkeypatch.setenv("COTRAIN_LEDGER_KEY", new.hex())
    monkeypatch.setenv("COTRAIN_LEDGER_TRUSTED_KEYS", str(old.public_key()))
    assert platform_ledger().trusted == {str(new.public_key()), str(old.public_key())}
    monkeypatch.setenv("COTRAIN_LEDGER_TRUSTED_KEYS", "zz")
    with pytest.raises(KeyConfigError, match="COTRAIN_LEDGER_TRUSTED_KEYS"):
        platform_ledger()


def test_keys_load_whatever_the_other_chain_variables_say(tmp_path, monkeypatch):
    """The key variables are their own settings class: a wrong payout setting does not stop the
    ledger key (the ledger and wallet sign-in need no node)."""
    from cotrain.chain.treasury import treasury_address

    key = ed25519.PrivateKey.random()
    monkeypatch.setenv("COTRAIN_LEDGER_KEY", key.hex())
    monkeypatch.setenv("COTRAIN_PAYOUT_BACKEND", "paypal")
    assert load_ledger_key() == key
    monkeypatch.setenv("COTRAIN_TREASURY_KEY", key.hex())
    assert treasury_address() == str(load_treasury_account().address())
    monkeypatch.setenv("COTRAIN_TREASURY_ADDRESS", " 0x1 ")
    assert treasury_address() == "0x1"
