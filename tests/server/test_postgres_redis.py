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
