"""A training run (user-controlled config and code) never inherits the server's secrets: the executor
strips every variable a settings class marks secret, and a bad variable stops `cotrain worker` with a
sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aptos_sdk import ed25519

from cotrain.server.env_reference import TABLES
from cotrain.server.executor import SECRET_ENV, inherited_env
from tests.server.conftest import engine_pids, reference_session, wait_until

# what a training run must never see (a settings class marks each `secret`)
SECRETS = {"COTRAIN_URL_SECRET", "COTRAIN_UI_SECRET", "COTRAIN_ADMIN_TOKEN", "DATABASE_URL", "REDIS_URL",
           "COTRAIN_TREASURY_KEY", "COTRAIN_TREASURY_KEY_FILE", "COTRAIN_LEDGER_KEY"}
# ... and settings it may see (public, or what the engine itself reads)
PUBLIC = {"COTRAIN_HOME", "COTRAIN_TREASURY_ADDRESS", "COTRAIN_LEDGER_TRUSTED_KEYS", "COTRAIN_PEAK_FLOPS",
          "COTRAIN_DATA_ROOTS", "COTRAIN_WORKER_MEMORY"}


def test_the_stripped_variables_are_the_settings_classes_secret_ones():
    documented = {name: field for table in TABLES.values() for name, field in table().items()}
    marked = {name for name, field in documented.items()
              if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret") is True}
    assert marked == set(SECRET_ENV)
    assert SECRETS <= SECRET_ENV
    assert not PUBLIC & SECRET_ENV


def test_a_run_inherits_all_but_the_secrets_and_the_server_tracking_defaults():
    environ = {**dict.fromkeys(SECRETS | PUBLIC, "x"), "PATH": "/usr/bin", "COTRAIN_TRACKING_BACKENDS": "mlflow"}
    assert inherited_env(environ) == {**dict.fromkeys(PUBLIC, "x"), "PATH": "/usr/bin"}


def test_a_real_run_lacks_every_secret(servers, cotrain_home):
    key = ed25519.PrivateKey.random().hex()
    secrets = {"COTRAIN_URL_SECRET": "url-secret-value", "COTRAIN_UI_SECRET": "ui-secret-value",
               "COTRAIN_LEDGER_KEY": key, "COTRAIN_TREASURY_KEY": key,
               "COTRAIN_TREASURY_KEY_FILE": str(cotrain_home / "treasury.key")}
    server = servers(**secrets)  # and COTRAIN_ADMIN_TOKEN (server_env); DATABASE_URL/REDIS_URL: the test above
    api = server.client()
    sid = api.post("/sessions", json=reference_session()).json()["id"]
    pid = wait_until(lambda: engine_pids(cotrain_home), 120, f"the engine of session {sid}")[0]
    environ = dict(entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if entry)
    assert environ["COTRAIN_HOME"] == str(cotrain_home)  # it is the run's environment
    assert {*secrets, "COTRAIN_ADMIN_TOKEN"} & set(environ) == set()
    assert not [value for value in environ.values() if key in value or "secret-value" in value]


def test_a_bad_variable_stops_the_worker_with_a_sentence(server_env):
    cotrain = str(Path(sys.executable).with_name("cotrain"))
    for name, value in (("COTRAIN_WORKER_MEMORY", "lots"), ("COTRAIN_GPUS", "first"),
                        ("COTRAIN_QUOTA_TOKENS", "many")):
        done = subprocess.run([cotrain, "worker"], env={**server_env, name: value}, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and name in done.stderr
        assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
