"""The server's DHT node as the Network page shows it (blocking: talks to the DHT process)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cotrain.server.chain_bridge import owner_wallet
from cotrain.server.join_command import join_command
from cotrain.server.session_service import SessionFilter
from cotrain.ui.context import platform

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

OPEN_STATES = ("running", "starting", "queued", "draft")  # a draft can be shared before it starts


def status() -> dict[str, Any]:
    dht = platform().dht
    try:
        state = dht.status()
        peers = dht.peers()
    except Exception as exc:  # the DHT process died under us
        return {"status": "error", "error": f"The DHT node does not answer: {exc}", "peer_id": None,
                "connected_peers": 0, "dht_size": 0, "visible_addresses": [], "peers": []}
    if state["status"] != "running" and state.get("error"):
        state["status"] = "error"
    return {**state, "peers": peers}


def start() -> dict[str, Any]:
    platform().dht.start()
    return status()


def open_diloco_sessions(actor: Actor | None, base_url: str) -> list[dict[str, str]]:
    """DiLoCo sessions a volunteer can join now, with the command to run."""
    service = platform().sessions
    wallet = owner_wallet(actor.name if actor else None)
    out = []
    for state in OPEN_STATES:
        rows, _ = service.find(actor, SessionFilter(status=state, strategy="diloco"), limit=20)
        out += [{"id": r.id, "name": r.name, "status": r.status, "command": join_command(base_url, r.id, wallet)}
                for r in rows]
    return out
