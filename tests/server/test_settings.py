"""Server settings come from the environment through pydantic-settings: the embedded defaults when
nothing is set, the operator's values when set, and one sentence naming the variable when a value
cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from cotrain.config.env_settings import EnvSettingsError
from cotrain.db import DatabaseSettings
from cotrain.server.settings import LimitSettings, QuotaSettings, Settings


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment with COTRAIN_HOME under tmp_path and none of the settings' other variables."""
    for cls in (Settings, DatabaseSettings, LimitSettings, QuotaSettings):
        for name in cls.variables():
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COTRAIN_GPUS", "")  # no nvidia-smi lookups
    return monkeypatch


def test_defaults_are_the_embedded_ones(environment, tmp_path):
    settings = Settings()
    home = (tmp_path / "home").resolve()
    assert settings.layout.root == home and (home / "models" / "checkpoints").is_dir()
    assert settings.database_url == f"sqlite:///{home / 'cotrain.db'}" and settings.uses_embedded_database
    assert settings.redis_url is None and settings.embedded_worker and settings.start_dht
    assert settings.dht_host_maddrs == ["/ip4/127.0.0.1/tcp/0"] and settings.gpus == []
    assert settings.data_roots == [home / "datasets" / "raw"]
    assert settings.worker_id.endswith(f":{home}")
    assert settings.quotas == QuotaSettings() and settings.max_body_bytes == 1_048_576


def test_values_are_read_as_the_operator_writes_them(environment, tmp_path):
    for name, value in {"DATABASE_URL": "postgresql://db/cotrain", "COTRAIN_GPUS": "0, 1",
                        "COTRAIN_START_DHT": "off", "COTRAIN_EMBEDDED_WORKER": "0",
                        "COTRAIN_DHT_INITIAL_PEERS": "/ip4/10.0.0.1/tcp/1,/ip4/10.0.0.2/tcp/1",
                        "COTRAIN_TRUSTED_PROXIES": "127.0.0.1", "COTRAIN_CANCEL_GRACE": "2.5",
                        "COTRAIN_DATA_ROOTS": f"{tmp_path}/a:{tmp_path}/b", "COTRAIN_QUOTA_TOKENS": "2e9",
                        "COTRAIN_QUOTA_WORLD_SIZE": "1_000", "COTRAIN_QUOTA_MODEL_SIZES": "tiny, small",
                        "COTRAIN_WORKER_MEMORY": "20GiB", "COTRAIN_MAX_RETRIES": ""}.items():  # empty: the default
        environment.setenv(name, value)
    settings = Settings()
    assert settings.database_url == "postgresql://db/cotrain" and not settings.uses_embedded_database
    assert settings.gpus == [0, 1] and not settings.start_dht and not settings.embedded_worker
    assert settings.dht_initial_peers == ["/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/1"]
    assert settings.trusted_proxies == ["127.0.0.1"] and settings.cancel_grace_s == 2.5
    assert settings.data_roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert (settings.quotas.tokens, settings.quotas.world_size) == (2_000_000_000, 1000)
    assert settings.quotas.model_sizes == ("tiny", "small") and settings.max_retries == 2
    assert settings.worker_memory == 20 * 1024**3


def test_secrets_come_from_the_settings_else_from_a_file_made_once(environment, tmp_path):
    from cotrain.server.signed_urls import load_secret

    home = Settings().layout.root
    assert Settings().url_secret is None and Settings().worker_memory is None
    made = load_secret(home, Settings().url_secret)
    assert made == load_secret(home) and (home / "url-secret").stat().st_mode & 0o777 == 0o600
    environment.setenv("COTRAIN_URL_SECRET", "from-the-operator")
    assert load_secret(home, Settings().url_secret) == b"from-the-operator"
    assert "from-the-operator" not in repr(Settings())  # a secret is never shown


def test_the_engine_reads_its_flags_from_the_environment_it_is_given(monkeypatch):
    from cotrain.config.env_settings import EngineSettings

    monkeypatch.setenv("COTRAIN_ENFORCE_DATA_ROOTS", "1")
    monkeypatch.setenv("COTRAIN_PEAK_FLOPS", "312e12")
    assert EngineSettings().enforce_data_roots and EngineSettings().peak_flops == 312e12
    given = EngineSettings.from_mapping({"COTRAIN_ALLOW_ANY_DATA_PATH": "yes"})  # none of this process's
    assert (given.enforce_data_roots, given.allow_any_data_path, given.peak_flops) == (False, True, None)
    monkeypatch.setenv("COTRAIN_PEAK_FLOPS", "fast")
    with pytest.raises(EnvSettingsError, match=r"^COTRAIN_PEAK_FLOPS='fast' is not a number; fix it or unset it\.$"):
        EngineSettings()


@pytest.mark.parametrize(("name", "value", "sentence"), [
    ("COTRAIN_MAX_RETRIES", "two", "COTRAIN_MAX_RETRIES='two' is not a whole number; set it to e.g. 2 or unset it."),
    ("COTRAIN_CANCEL_GRACE", "soon", "COTRAIN_CANCEL_GRACE='soon' is not a number; set it to e.g. 30.0 or unset it."),
    ("COTRAIN_GPUS", "first", "COTRAIN_GPUS='first' is not a list of GPU indices"),
    ("COTRAIN_QUOTA_TOKENS", "-5", "COTRAIN_QUOTA_TOKENS='-5' is not a whole number >= 0; set it to e.g. 2000000000"),
    ("COTRAIN_MAX_BODY_BYTES", "1MB", "COTRAIN_MAX_BODY_BYTES='1MB' is not a whole number"),
    ("COTRAIN_WORKER_MEMORY", "lots", "COTRAIN_WORKER_MEMORY: 'lots' is not a memory size; write it like 20GiB"),
])
def test_a_bad_value_is_one_sentence_naming_the_variable(environment, name, value, sentence):
    environment.setenv(name, value)
    with pytest.raises(EnvSettingsError) as err:
        Settings()
    assert str(err.value).startswith(sentence) and "\n" not in str(err.value)
