"""The production path on this machine's PostgreSQL and Redis: two API-only server replicas and
a separate `cotrain worker` share one queue; the worker runs the session, and a WebSocket client
on the *other* replica gets the progress through Redis pub/sub."""

from __future__ import annotations

import pytest

from tests.server.test_end_to_end import run_reference_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_reference_session_on_postgres_redis_and_a_worker(servers, pg_url, redis_url):
    shared = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "COTRAIN_EMBEDDED_WORKER": "0"}
    api_replica = servers(**shared)
    ws_replica = servers(**shared)
    servers("worker", **{**shared, "COTRAIN_WORKER_ID": "gpu-box-1"})
    assert api_replica.client().get("/health").json()["data"]["database"] == "postgresql"
    run_reference_session(api_replica, ws_server=ws_replica)
    sessions = api_replica.client().get("/sessions").json()["items"]
    assert sessions[0]["status"] == "completed"


def test_sessions_of_a_dead_worker_move_to_another(servers, pg_url, redis_url, cotrain_home):
    """A worker machine dies (worker and engine killed): after the heartbeat timeout another
    worker takes the session over and it resumes from its checkpoint."""
    import os
    import signal

    from tests.server.conftest import engine_pids, reference_session, wait_until

    shared = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "COTRAIN_EMBEDDED_WORKER": "0",
              "COTRAIN_HEARTBEAT_TIMEOUT": "3"}
    api = servers(**shared).client()
    doomed = servers("worker", **{**shared, "COTRAIN_WORKER_ID": "box-a"})
    body = reference_session()
    body["trainingConfig"]["maxSteps"] = 60
    sid = api.post("/sessions", json=body).json()["id"]
    wait_until(lambda: any(m["event"] == "training.checkpoint" for m in api.get(f"/sessions/{sid}/events").json()),
               120, "a checkpoint on box-a")
    doomed.stop(signal.SIGKILL)
    for pid in engine_pids(cotrain_home):
        os.killpg(pid, signal.SIGKILL)

    servers("worker", **{**shared, "COTRAIN_WORKER_ID": "box-b"})
    session = wait_until(
        lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s, 180,
        "box-b to finish the session",
    )
    assert session["status"] == "completed", session["error"]
    statuses = [m["data"] for m in api.get(f"/sessions/{sid}/events").json() if m["event"] == "training.status"]
    assert any("box-a stopped responding" in (s.get("error") or "") for s in statuses)
    assert any((s.get("resumedFrom") or "").count("step-") for s in statuses)
