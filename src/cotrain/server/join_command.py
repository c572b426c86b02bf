"""The command line a volunteer runs to join a DiLoCo session: the one shown by
GET /api/v1/sessions/{id}/join, the session page and the Network page."""

from __future__ import annotations


def join_command(base_url: str, session_id: str, wallet: str | None = None) -> str:
    """`cotrain join --server` fetches the session's config (same model and data as every peer)
    and the server's DHT peers itself; `wallet` (0x...) credits the work to that Aptos address.
    A private session also needs the volunteer's token (`--token` or COTRAIN_TOKEN)."""
    command = f"cotrain join --server {base_url.rstrip('/')} --session {session_id}"
    return f"{command} --wallet {wallet}" if wallet else command
