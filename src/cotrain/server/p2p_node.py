"""The server's hivemind DHT node: the bootstrap peer of DiLoCo sessions, and the source of the
peers and per-peer progress the API shows (`cotrain.p2p.progress.PeerProgress` records, read from the
DHT with `cotrain.p2p.records.fetch_progress`).

hivemind runs the DHT in a child process; coroutines sent to it with `run_coroutine` must be
module-level functions (they are pickled)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from cotrain.p2p.progress import PeerProgress

log = logging.getLogger(__name__)


async def _connected_peers(_dht: Any, node: Any) -> list[dict[str, Any]]:
    peers = await node.p2p.list_peers()
    return [{"peer_id": str(p.peer_id), "addrs": [str(a) for a in p.addrs]} for p in peers]


async def _routing_table_size(_dht: Any, node: Any) -> int:
    return len(node.protocol.routing_table.uid_to_peer_id)


async def _connect(_dht: Any, node: Any, address: str) -> str:
    from hivemind.p2p import PeerID
    from hivemind.utils.multiaddr import Multiaddr

    maddr = Multiaddr(address)
    peer_text = maddr.value_for_protocol("p2p")
    peer_id = PeerID.from_base58(peer_text)
    await node.p2p._client.connect(peer_id, [maddr.decapsulate(Multiaddr(f"/p2p/{peer_text}"))])
    node_id = await node.protocol.call_ping(peer_id)
    if node_id is None:
        raise ConnectionError(f"{address} accepted the connection but did not answer the DHT ping")
    return str(peer_id)


class _Connect:
    """A picklable coroutine factory carrying the address (lambdas do not pickle)."""

    def __init__(self, address: str):
        self.address = address

    async def __call__(self, dht: Any, node: Any) -> str:
        return await _connect(dht, node, self.address)


class ServerDHT:
    def __init__(self, host_maddrs: list[str], initial_peers: list[str] | None = None,
                 announce_maddrs: list[str] | None = None):
        self.host_maddrs = host_maddrs
        self.initial_peers = initial_peers or []
        self.announce_maddrs = announce_maddrs or []  # what peers are told to dial, when not host_maddrs
        self.dht: Any = None
        self.started_at: float | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._addresses: list[str] = []

    @property
    def running(self) -> bool:
        return self.dht is not None and self.dht.is_alive()

    def start(self) -> dict[str, Any]:
        """Start the node (idempotent) and return its status."""
        with self._lock:
            if not self.running:
                try:
                    # a node with the signature validator the peers' progress records need
                    # (imports hivemind: only when the node starts)
                    from cotrain.p2p.dht import start_dht

                    self.dht = start_dht(initial_peers=self.initial_peers, host_maddrs=self.host_maddrs,
                                         announce_maddrs=self.announce_maddrs)
                    self._addresses = [str(a) for a in self.dht.get_visible_maddrs()]
                    self.started_at, self.error = time.time(), None
                except Exception as exc:
                    self.dht, self.error = None, f"The DHT node did not start: {exc}"
                    log.error(self.error)
        return self.status()

    def stop(self) -> None:
        with self._lock:
            if self.dht is not None:
                self.dht.shutdown()
                self.dht = None

    def bootstrap_addresses(self) -> list[str]:
        return list(self._addresses) if self.running else []

    def status(self) -> dict[str, Any]:
        if not self.running:
            return {"status": "stopped", "peer_id": None, "connected_peers": 0, "dht_size": 0,
                    "visible_addresses": [], "error": self.error}
        peers = self.peers()
        return {
            "status": "running",
            "peer_id": str(self.dht.peer_id),
            "connected_peers": len(peers),
            "dht_size": self.dht.run_coroutine(_routing_table_size) + 1,  # the peers it knows, plus itself
            "visible_addresses": [str(a) for a in self.dht.get_visible_maddrs()],
            "started_at": self.started_at,
            "error": None,
        }

    def peers(self) -> list[dict[str, Any]]:
        return self.dht.run_coroutine(_connected_peers) if self.running else []

    def connect(self, address: str) -> dict[str, Any]:
        if not self.running:
            raise RuntimeError("The DHT node is not running; start it with POST /api/v1/hivemind/start.")
        peer_id = self.dht.run_coroutine(_Connect(address))
        return {"peer_id": peer_id, "address": address}

    def progress_records(self, session_id: str) -> list[PeerProgress] | None:
        """The live signed progress records of a session, each credited to the key that signed it (unsigned,
        impersonating and out-of-range entries are skipped), or None when the node is not running or the
        read failed."""
        if not self.running:
            return None
        from cotrain.p2p.records import fetch_progress  # imports hivemind: only once the node runs

        try:
            return list(fetch_progress(self.dht, session_id))
        except Exception as exc:
            log.warning("reading peer records of %s failed: %s", session_id, exc)
            return None

    def session_peers(self, session_id: str) -> list[dict[str, Any]] | None:
        """Per-peer progress records of a session as dicts, or None when they cannot be read (the
        caller falls back to what the engine reported)."""
        records = self.progress_records(session_id)
        if records is None:
            return None
        return [asdict(r) for r in records]
