"""A DiLoCo session uses the server's DHT node as its bootstrap peer: the engine joins it, and
the session's participants come from the engine's signed progress records on that DHT."""

from __future__ import annotations

import json

import pytest

from tests.server.conftest import reference_session, wait_until

pytestmark = pytest.mark.slow


def test_diloco_session_bootstraps_from_the_server_dht(servers, cotrain_home):
    server = servers(COTRAIN_START_DHT="1")
    api = server.client()
    addresses = api.get("/hivemind/status").json()["data"]["visible_addresses"]
    assert addresses
    body = reference_session()
    body["distributedConfig"].update(strategy="diloco", innerSteps=10)
    body["trainingConfig"]["maxSteps"] = 20
    sid = api.post("/sessions", json=body).json()["id"]

    seen_peers = []

    def finished():
        participants = api.get(f"/sessions/{sid}/participants").json()
        if participants["source"] == "dht" and participants["peers"]:
            seen_peers.append(participants["peers"])
        session = api.get(f"/sessions/{sid}").json()
        return session if session["status"] in ("completed", "failed") else None

    session = wait_until(finished, 300, "the DiLoCo session to finish", interval=0.5)
    assert session["status"] == "completed", (session["error"], api.get(f"/sessions/{sid}/logs").json()["lines"][-30:])
    events_file = cotrain_home / "logs" / "training" / sid / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    started = next(e for e in events if e["type"] == "started")
    assert started["config"]["distributed"]["diloco"]["initial_peers"] == addresses
    assert seen_peers and seen_peers[-1][0]["session_id"] == sid
