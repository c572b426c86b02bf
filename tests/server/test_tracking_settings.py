"""The server's experiment trackers (COTRAIN_TRACKING_*): written into every session's config when
it is created (where the config sets no value of its own), then that config is what the run
follows, even after the server's settings change; a bad variable stops `cotrain up` with one
sentence."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cotrain.config import load_config
from cotrain.server.config_generator import with_server_tracking
from tests.conftest import free_port
from tests.server.conftest import reference_session, wait_until

SERVER_TRACKING = {"backends": ["tensorboard", "mlflow"], "mlflow_uri": "http://127.0.0.1:5000",
                   "mlflow_experiment": "team"}


def test_the_session_config_wins_key_by_key_over_the_server():
    own = load_config(data={"tracking": {"backends": ["wandb"], "mlflow_experiment": "mine"}})
    merged = with_server_tracking(own, SERVER_TRACKING)
    assert merged.tracking.backends == ["wandb"] and merged.tracking.mlflow_experiment == "mine"
    assert merged.tracking.mlflow_uri == "http://127.0.0.1:5000"  # a key the session left unset
    assert own.tracking.mlflow_uri is None  # the session's config itself is not changed
    plain = load_config(data={})
    assert with_server_tracking(plain, {}) is plain
    assert with_server_tracking(plain, SERVER_TRACKING).tracking.model_dump(exclude_unset=True) == SERVER_TRACKING


@pytest.mark.slow
def test_a_session_runs_with_the_tracking_it_was_created_with(servers, cotrain_home: Path, tmp_path: Path):
    at_create, later = tmp_path / "tb-at-create", tmp_path / "tb-later"
    first = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_TRACKING_BACKENDS="tensorboard",
                    COTRAIN_TRACKING_TENSORBOARD_DIR=str(at_create), COTRAIN_TRACKING_MLFLOW_EXPERIMENT="team")
    api = first.client()
    created = api.post("/sessions", json=reference_session(autoStart=False))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    tracking = tomllib.loads(api.get(f"/sessions/{sid}/config").text)["tracking"]
    assert tracking == {"backends": ["tensorboard"], "tensorboard_dir": str(at_create), "mlflow_experiment": "team"}
    edited = api.patch(f"/sessions/{sid}", json={"name": "tracked run"})
    assert edited.status_code == 200, edited.text
    assert tomllib.loads(api.get(f"/sessions/{sid}/config").text)["tracking"] == tracking
    first.stop()

    # the operator changes the setting; the session keeps what it was created with, although the
    # engine runs in the new server's environment (the executor keeps COTRAIN_TRACKING_* from it)
    second = servers(COTRAIN_TRACKING_BACKENDS="tensorboard", COTRAIN_TRACKING_TENSORBOARD_DIR=str(later))
    api = second.client()
    assert api.post(f"/sessions/{sid}/start").status_code == 200
    status = wait_until(
        lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s, 240,
        "the session to finish",
    )
    assert status["status"] == "completed", (status["error"], api.get(f"/sessions/{sid}/logs").json()["lines"][-20:])
    assert list((at_create / sid).glob("events.out.tfevents.*")), list(at_create.rglob("*"))
    assert not later.exists()


def test_a_bad_tracking_variable_stops_the_server_with_one_sentence(server_env: dict[str, str]):
    env = {**server_env, "COTRAIN_TRACKING_BACKENDS": "tensorboard,neptune"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cotrain")), "up", "--api-only", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: COTRAIN_TRACKING_BACKENDS: backends.1 = \"neptune\"")
    assert "Traceback" not in result.stderr
