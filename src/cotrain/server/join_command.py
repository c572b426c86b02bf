"""The command line a volunteer runs to join a DiLoCo session: the one shown by
GET /api/v1/sessions/{id}/join, the session page and the Network page."""

from __future__ import annotations


def join_command(base_url: str, session_id: str, initial_peers: list[str], wallet: str | None = None) -> str:
    """Fetch the session's config (same model and data as every peer), then `cotrain join` it
    through the given DHT peers; `wallet` (0x...) credits the work to that Aptos address."""
    config = f"{session_id}.toml"
    peers = " ".join(f"--initial-peers {address}" for address in initial_peers) or "--initial-peers <address>"
    command = (f"curl -fsS {base_url.rstrip('/')}/api/v1/sessions/{session_id}/config -o {config} && "
               f"cotrain join --session {session_id} --config {config} {peers}")
    return f"{command} --wallet {wallet}" if wallet else command
