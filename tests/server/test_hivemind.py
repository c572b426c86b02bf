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


class PublishedPort:
    """A TCP port forwarded to another, as a container engine publishes one: what arrives on `port` is
    relayed to `target` (threads, loopback only)."""

    def __init__(self, target: int):
        import socket
        import threading

        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_volunteers_reach_the_dht_through_its_announced_address(servers):
    """In a container the DHT node listens on one port and the host publishes another: with
    COTRAIN_DHT_ANNOUNCE_MADDRS the node hands out the published address (status, join command), and a
    volunteer bootstrapping from it reaches the node through the published port."""
    from cotrain.p2p.dht import start_dht
    from tests.conftest import free_port

    listening = free_port()
    published = PublishedPort(listening)
    announced = f"/ip4/127.0.0.1/tcp/{published.port}"
    server = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_START_DHT="1",
                     COTRAIN_DHT_HOST_MADDRS=f"/ip4/127.0.0.1/tcp/{listening}", COTRAIN_DHT_ANNOUNCE_MADDRS=announced)
    api = server.client()
    status = wait_until(lambda: (s := api.get("/hivemind/status").json()["data"])["status"] == "running" and s, 60,
                        "the server's DHT node")
    assert [a.split("/p2p/")[0] for a in status["visible_addresses"]] == [announced], status
    body = reference_session()
    body["distributedConfig"].update(strategy="diloco", innerSteps=10)
    sid = api.post("/sessions", json=body).json()["id"]
    initial_peers = api.get(f"/sessions/{sid}/join").json()["initialPeers"]
    assert initial_peers == status["visible_addresses"]
    volunteer = start_dht(initial_peers=initial_peers)
    try:
        assert published.connections >= 1
        wait_until(lambda: str(volunteer.peer_id) in {p["peer_id"] for p in api.get("/hivemind/peers").json()["data"]},
                   30, "the volunteer among the server's peers")
    finally:
        volunteer.shutdown()
        published.close()


def test_an_announced_address_that_is_no_multiaddr_stops_the_server(server_env):
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import free_port

    env = {**server_env, "COTRAIN_DHT_ANNOUNCE_MADDRS": "203.0.113.7:31337"}
    result = subprocess.run([str(Path(sys.executable).with_name("cotrain")), "up", "--api-only", "--port",
                             str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "COTRAIN_DHT_ANNOUNCE_MADDRS: '203.0.113.7:31337' is not a TCP or UDP multiaddr" in result.stderr
    assert "Traceback" not in result.stderr
