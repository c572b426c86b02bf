"""A session run by a `cotrain worker` on another machine (here: another COTRAIN_HOME sharing the
PostgreSQL database): the API shows the run's log tail from the database, where the worker keeps
its last lines, and a model download says which worker's disk has the files instead of "gone"."""

from __future__ import annotations

import pytest

from tests.server.conftest import reference_session, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_log_tail_and_model_of_a_run_on_another_machine(servers, pg_url, cotrain_home, tmp_path):
    worker_home = tmp_path / "worker-machine"
    worker_home.mkdir()
    (worker_home / "datasets").symlink_to((cotrain_home / "datasets").resolve(), target_is_directory=True)
    shared = {"DATABASE_URL": pg_url, "COTRAIN_EMBEDDED_WORKER": "0"}
    server = servers(**shared)
    api = server.client()
    servers("worker", **shared, COTRAIN_HOME=str(worker_home), COTRAIN_WORKER_ID="gpu-box-1")

    sid = api.post("/sessions", json=reference_session()).json()["id"]
    worker_log = worker_home / "logs" / "training" / sid / "stderr.log"
    live = wait_until(lambda: (t := api.get(f"/sessions/{sid}/logs").json())["lines"] and t, 120,
                      "the tail while it runs")
    assert live["source"] == "database" and live["workerId"] == "gpu-box-1"

    session = wait_until(lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s,
                         180, "the run to finish")
    assert session["status"] == "completed", session["error"]
    assert not (cotrain_home / "logs" / "training" / sid).exists()  # nothing of the run is on this machine
    on_worker = worker_log.read_text().splitlines()
    tail = api.get(f"/sessions/{sid}/logs", params={"lines": 5000}).json()
    assert tail["source"] == "database" and tail["lines"] == on_worker[-200:]  # the whole (bounded) tail, current
    assert api.get(f"/sessions/{sid}/logs", params={"lines": 3}).json()["lines"] == on_worker[-3:]
    stdout = api.get(f"/sessions/{sid}/logs", params={"stream": "stdout", "lines": 5000}).json()
    assert stdout["lines"] == (worker_home / "logs" / "training" / sid / "stdout.log").read_text().splitlines()[-200:]

    [version] = api.get("/models", params={"session": sid}).json()
    refused = api.get(f"/models/{version['id']}/download")
    assert refused.status_code == 409
    message = refused.json()["detail"]
    assert "gpu-box-1" in message and "COTRAIN_HOME" in message and "shared" in message

    # a server on the worker's machine has the files
    local = servers(**shared, COTRAIN_HOME=str(worker_home))
    download = local.client().get(f"/models/{version['id']}/download")
    assert download.status_code == 200 and download.content[:2] == b"PK"
    assert local.client().get(f"/sessions/{sid}/logs").json()["lines"] == on_worker[-200:]
