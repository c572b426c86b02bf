"""The server's DHT node with real hivemind peers on loopback: the original design's hivemind
endpoints, connecting a peer, and a session's participants read from the peers' signed
progress records (cotrain.p2p.records)."""

from __future__ import annotations

import pytest

from tests.server.conftest import reference_session, wait_until

pytestmark = pytest.mark.slow


def test_dht_endpoints_and_participants_from_peer_records(servers):
    from cotrain.p2p.dht import signer, start_dht
    from cotrain.p2p.progress import PeerProgress
    from cotrain.p2p.records import publish_progress

    server = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_START_DHT="0")
    api = server.client()
    assert api.get("/hivemind/status").json()["data"]["status"] == "stopped"
    started = api.post("/hivemind/start").json()
    assert started["status"] == "success"
    status = started["data"]
    assert status["status"] == "running" and status["peer_id"] and status["visible_addresses"]
    assert api.post("/hivemind/start").json()["data"]["peer_id"] == status["peer_id"]  # idempotent

    peers = []
    try:
        # a volunteer that bootstraps from the server, and one the server connects to itself
        volunteer = start_dht(initial_peers=status["visible_addresses"])
        peers.append(volunteer)
        loner = start_dht()
        peers.append(loner)
        address = f"{loner.get_visible_maddrs()[0]}"
        connected = api.post("/hivemind/peers/connect", json={"address": address})
        assert connected.status_code == 200, connected.text
        assert connected.json()["data"]["peer_id"] == str(loner.peer_id)
        bad = api.post("/hivemind/peers/connect", json={"address": "/ip4/127.0.0.1/tcp/1"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "address"]

        listed = {p["peer_id"] for p in api.get("/hivemind/peers").json()["data"]}
        assert {str(volunteer.peer_id), str(loner.peer_id)} <= listed
        assert api.get("/hivemind/status").json()["data"]["connected_peers"] >= 2

        body = reference_session()
        body["distributedConfig"].update(strategy="diloco", innerSteps=10)
        sid = api.post("/sessions", json=body).json()["id"]
        assert api.get(f"/sessions/{sid}/join").json()["initialPeers"] == status["visible_addresses"]
        record = PeerProgress(peer_id=str(volunteer.peer_id), session_id=sid, step=30, outer_step=3,
                              tokens_per_second=1234.0, samples=240, tokens=15360, device="cpu")
        assert publish_progress(volunteer, signer(volunteer), record, ttl=60)
        participants = wait_until(
            lambda: (p := api.get(f"/sessions/{sid}/participants").json())["peers"] and p, 30, "the peer's record"
        )
        assert participants["source"] == "dht" and participants["count"] == 1
        assert participants["peers"][0]["step"] == 30 and participants["peers"][0]["tokens"] == 15360
    finally:
        for dht in peers:
            dht.shutdown()
