"""A real `mlflow server` for tests (SQLite backend store, loopback port) and readers of what a
session sent to it; used by the engine's tracker tests and the platform's end-to-end test."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import PYTHON, free_port, missing_service, wait_until

MLFLOW_START_S = 180  # `mlflow server` takes ~15 s to answer on a busy 2-core machine


@contextmanager
def running_mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port with its store under `root`; yields its URI."""
    if importlib.util.find_spec("mlflow.server") is None or importlib.util.find_spec("flask") is None:
        missing_service("the full mlflow package (its server) is not installed: pip install -e '.[dev]'")
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [PYTHON, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own group: it starts helpers
        # without its job runner: mlflow 3 starts a few huey consumers for server-side jobs that the tests never
        # use, and they poll for work at about 13% of a core each (more than half a core together)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{uri}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, MLFLOW_START_S, f"mlflow server on port {port}", interval=0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)  # its graceful stop can take 20 s; a test server's files need none
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def mlflow_run(uri: str, session: str, experiment: str = "tracking-tests") -> Any:
    """The one MLflow run of `session`, found as a test of the platform would: by its tag."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`cotrain.session_id` = '{session}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def mlflow_history(uri: str, run_id: str, key: str) -> dict[int, float]:
    from mlflow import MlflowClient

    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}


def tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    """One scalar curve of a TensorBoard run folder, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}
