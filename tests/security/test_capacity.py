"""Capacity: a session no registered worker can ever fit (GPUs per node and memory) is refused at
creation, and one that stops fitting waits with a reason and is skipped, so it never blocks the
queue or starts only to be OOM-killed. Real `cotrain up` and `cotrain worker` processes sharing
one database; the workers report their memory (COTRAIN_WORKER_MEMORY overrides the measurement)."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from cotrain.config.memory import GIB
from cotrain.db import make_db_factory, make_engine, sqlite_url
from cotrain.server.orm import Worker
from cotrain.server.worker_memory import host_memory
from tests.security.conftest import api_token, reference_session
from tests.server.conftest import wait_until

# the published llama2 7B at the tiny run's batch and sequence: about 105 GiB of AdamW state per process
BIG = {"modelConfig": {"type": "llama2", "size": "7B", "precision": "fp32"}}
NEED = re.compile(r"llama2 7B needs about (\d+\.\d) GiB per process; the largest worker has 24\.0 GiB of RAM")
CPU_ONLY = {"COTRAIN_GPUS": ""}  # a CPU worker even on a machine with GPUs


def big_session(name: str, **changes: object) -> dict[str, object]:
    return reference_session(name=name, **BIG, **changes)


def workers_in(home) -> dict[str, int | None]:
    engine = make_engine(sqlite_url(home / "cotrain.db"))
    try:
        with make_db_factory(engine).begin() as db:
            return {w.id: w.memory_bytes for w in db.scalars(select(Worker))}
    finally:
        engine.dispose()


def test_llama2_7b_on_a_24gib_cpu_worker_is_refused_at_creation(servers, cotrain_home):
    server = servers(COTRAIN_WORKER_MEMORY="24GiB", COTRAIN_WORKER_ID="cpu-box", **CPU_ONLY)
    assert workers_in(cotrain_home) == {"cpu-box": 24 * GIB}
    api = server.client()  # the admin: being allowed everything does not make a run fit

    refused = api.post("/sessions", json=big_session("too big"))
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "modelConfig", "size"] and error["type"] == "capacity"
    need = NEED.search(error["msg"])
    assert need and float(need.group(1)) > 24, error["msg"]
    assert "Traceback" not in error["msg"] and "cpu-box" not in error["msg"]  # no worker ids (host:path) for callers
    assert api.get("/sessions").json()["total"] == 0  # nothing stored, nothing queued

    # a draft is refused the same way, and so is editing a small one into the big one
    assert api.post("/sessions", json=big_session("draft", autoStart=False)).status_code == 422
    small = api.post("/sessions", json=reference_session(name="small", autoStart=False))
    assert small.status_code == 201, small.text
    grown = api.patch(f"/sessions/{small.json()['id']}", json=BIG)
    assert grown.status_code == 422 and NEED.search(grown.json()["detail"][0]["msg"]), grown.text
    assert "size = \"debug\"" in api.get(f"/sessions/{small.json()['id']}/config").text  # unchanged

    # a member is refused with the same sentence
    member = server.client(api_token(server, "member"))
    refused = member.post("/sessions", json=big_session("member's"))
    assert refused.status_code == 422 and NEED.search(refused.json()["detail"][0]["msg"]), refused.text

    # GPUs per node count on GPU workers only: this CPU worker runs a 4-GPU request on CPU, it fits
    four = reference_session(name="four ranks", autoStart=False)
    four["distributedConfig"]["gpusPerNode"] = 4
    four["trainingConfig"]["batchSize"] = 8
    assert api.post("/sessions", json=four).status_code == 201


def test_a_gpu_request_larger_than_every_gpu_worker_is_refused(servers):
    # a worker that says it has two GPUs of 16 GiB (this machine may have none: nothing runs here)
    server = servers(COTRAIN_GPUS="0,1", COTRAIN_WORKER_MEMORY="16GiB")
    api = server.client()
    body = reference_session(name="eight GPUs")
    body["distributedConfig"]["gpusPerNode"] = 8
    refused = api.post("/sessions", json=body)
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "distributedConfig", "gpusPerNode"]
    assert "the largest worker has 2 GPUs" in error["msg"] and "Lower gpusPerNode to 2" in error["msg"]

    per_gpu = api.post("/sessions", json=big_session("7B on 16 GiB GPUs"))
    assert per_gpu.status_code == 422
    assert re.search(r"needs about \d+\.\d GiB per process; the largest worker has 16\.0 GiB per GPU",
                     per_gpu.json()["detail"][0]["msg"]), per_gpu.text


def test_a_worker_reports_its_memory_when_it_registers(servers, cotrain_home):
    servers(COTRAIN_WORKER_ID="measured", **CPU_ONLY)
    assert workers_in(cotrain_home) == {"measured": host_memory()}
    assert host_memory() and host_memory() > 256 * 1024**2


def test_a_bad_memory_setting_stops_the_worker_with_a_sentence(servers, cotrain_home):
    with pytest.raises(AssertionError, match="exited"):
        servers(COTRAIN_WORKER_MEMORY="lots")
    log = next(cotrain_home.glob("up-*.log")).read_text()
    assert "COTRAIN_WORKER_MEMORY" in log and "20GiB" in log and "Traceback" not in log


@pytest.mark.slow
def test_unfittable_top_priority_sessions_do_not_block_a_small_one(servers):
    # created while no worker is registered, so they are accepted and wait
    server = servers(COTRAIN_EMBEDDED_WORKER="0")
    api = server.client()
    big = []
    for i in range(25):  # more than one page of the queue scan
        created = api.post("/sessions", json=big_session(f"big {i}", priority=100))
        assert created.status_code == 201, created.text
        big.append(created.json()["id"])

    worker = servers("worker", COTRAIN_WORKER_MEMORY="24GiB", COTRAIN_WORKER_ID="cpu-box", **CPU_ONLY)
    wait_until(lambda: NEED.search(api.get(f"/sessions/{big[0]}").json()["waitingReason"] or ""), 30,
               "the big sessions to say they need more memory than the worker has")
    small = api.post("/sessions", json=reference_session(name="small", priority=0))
    assert small.status_code == 201, small.text
    done = wait_until(
        lambda: (s := api.get(f"/sessions/{small.json()['id']}").json())["status"] in ("completed", "failed") and s,
        240, "the small session to finish")
    assert done["status"] == "completed", done["error"]

    listed = {s["id"]: s for s in api.get("/sessions", params={"limit": 100}).json()["items"]}
    for sid in big:  # never claimed, never started: no attempt spent, no OOM
        row = listed[sid]
        assert (row["status"], row["attempts"], row["error"]) == ("queued", 0, None), row
        assert NEED.search(row["waitingReason"]) and "Choose a smaller model size" in row["waitingReason"], row
    assert "Traceback" not in worker.log_path.read_text()


@pytest.mark.slow
def test_a_queued_session_that_stops_fitting_waits_with_the_reason_and_is_never_started(servers):
    server = servers(COTRAIN_EMBEDDED_WORKER="0")
    api = server.client()
    worker = servers("worker", COTRAIN_WORKER_MEMORY="200GiB", COTRAIN_WORKER_ID="box", **CPU_ONLY)
    blocker = reference_session(name="keeps the only slot busy")
    blocker["trainingConfig"]["maxSteps"] = 100_000
    blocker_id = api.post("/sessions", json=blocker).json()["id"]
    wait_until(lambda: api.get(f"/sessions/{blocker_id}").json()["status"] == "running", 60, "the blocker to run")
    created = api.post("/sessions", json=big_session("fits the 200 GiB worker"))
    assert created.status_code == 201, created.text  # a worker can hold it: accepted, waits for the slot
    sid = created.json()["id"]
    assert api.get(f"/sessions/{sid}").json()["waitingReason"].startswith("Waiting for a free slot on the 1 worker")

    # the machine comes back with less memory (same worker id: it re-attaches to the blocker's run)
    worker.stop()
    worker = servers("worker", COTRAIN_WORKER_MEMORY="24GiB", COTRAIN_WORKER_ID="box", **CPU_ONLY)
    reason = api.get(f"/sessions/{sid}").json()["waitingReason"]
    assert NEED.search(reason), reason
    assert api.get(f"/sessions/{blocker_id}").json()["status"] == "running"

    # the slot frees up, and the worker still does not start a run it knows would be OOM-killed
    api.post(f"/sessions/{blocker_id}/cancel")
    wait_until(lambda: api.get(f"/sessions/{blocker_id}").json()["status"] == "cancelled", 60, "the blocker to stop")
    wait_until(lambda: "idle" if api.get("/sessions", params={"status": "running"}).json()["total"] == 0 else None,
               10, "no run")
    time.sleep(3)  # several claim ticks of the idle worker
    row = api.get(f"/sessions/{sid}").json()
    assert (row["status"], row["attempts"]) == ("queued", 0) and NEED.search(row["waitingReason"]), row
    # and starting it again is refused while no worker can hold it
    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelled"
    restarted = api.post(f"/sessions/{sid}/start")
    assert restarted.status_code == 422 and NEED.search(restarted.json()["detail"][0]["msg"]), restarted.text
    assert "Traceback" not in worker.log_path.read_text()
