"""`/health/live`, `/health/ready` and `/health` while Redis, then PostgreSQL, is down and after it
returns (issue 18, "Health"): a real `cotrain up` on a PostgreSQL and a Redis of the test's own.
Liveness stays 200 throughout (an outage is no reason to restart the process); readiness and
`/health` answer 503 naming the failed component, and 200 again soon after it is back."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.faults.services import OwnPostgres, OwnRedis
from tests.server.conftest import wait_until

pytestmark = pytest.mark.slow


def get(server: Any, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=10)


def failed(server: Any) -> list[str]:
    """The components /health/ready names as failed ([] when it answers 200)."""
    response = get(server, "/health/ready")
    return [] if response.status_code == 200 else response.json()["failed"]


def test_probes_name_the_failed_component_and_recover(servers, own_postgres: OwnPostgres, own_redis: OwnRedis):
    server = servers(DATABASE_URL=own_postgres.url, REDIS_URL=own_redis.url)
    ready = get(server, "/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["data"]["components"]) == {"database", "fan-out", "dht", "executor"}
    health = get(server, "/health").json()["data"]
    assert (health["server"], health["database"], health["fanout"]) == ("ok", "postgresql", "redis")

    own_redis.stop()
    wait_until(lambda: failed(server) == ["fan-out"], 10, "readiness to name the fan-out")
    ready = get(server, "/health/ready")
    assert ready.status_code == 503 and "fan-out" in ready.json()["detail"] and "Redis" in ready.json()["detail"]
    assert get(server, "/health/live").status_code == 200
    health = get(server, "/health")
    assert health.status_code == 503
    assert health.json()["data"]["server"] == "degraded"
    assert not health.json()["data"]["components"]["fan-out"]["ok"]
    assert health.json()["data"]["components"]["database"]["ok"]
    own_redis.start()
    returned = time.monotonic()
    wait_until(lambda: failed(server) == [], 10, "readiness after Redis's return")
    print(f"\nhealth: ready {time.monotonic() - returned:.2f} s after Redis returned", flush=True)

    own_postgres.stop()
    assert failed(server) == ["database"]
    assert "database" in get(server, "/health/ready").json()["detail"]
    assert get(server, "/health/live").status_code == 200
    health = get(server, "/health")
    assert health.status_code == 503 and not health.json()["data"]["components"]["database"]["ok"]
    own_postgres.start()
    returned = time.monotonic()
    wait_until(lambda: failed(server) == [], 20, "readiness after PostgreSQL's return")
    print(f"health: ready {time.monotonic() - returned:.2f} s after PostgreSQL returned", flush=True)
    assert get(server, "/health").status_code == 200
