"""Signed, expiring per-peer progress records on the DHT.

Every peer of a session stores one record under the key `cotrain/<session>/progress`, in a
subkey that is its own RSA public key. The DHT's `RSASignatureValidator` makes that subkey
writable only by the key's owner, so a record cannot be forged or overwritten by another peer.
Records expire `ttl` seconds after they were written: a peer that stops publishing (killed,
disconnected) disappears from `fetch_progress` within `ttl`.

The server lists participants with `fetch_progress(dht, session_id)`; contribution accounting
uses `samples`/`tokens` of the last record it saw per peer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

from cotrain.p2p.dht import ensure_signature_validator, signer

log = logging.getLogger(__name__)

DEFAULT_TTL = 9.0


@dataclass
class PeerProgress:
    """What one peer reports about itself. `updated` is DHT time (≈ unix seconds)."""

    peer_id: str
    session_id: str
    step: int
    outer_step: int
    tokens_per_second: float
    samples: int
    tokens: int
    wallet: str | None = None
    device: str = "cpu"
    updated: float = 0.0
    ready_round: int = 0  # DiLoCo: the outer round this peer has finished its inner steps for
    params_hash: str | None = None  # hash of its global params after `outer_step`
    active: bool = True  # False in the last record of a peer that finished or left
    system: dict[str, Any] | None = None  # its machine: a NODE of the progress event's `system` block
    round: dict[str, Any] | None = None  # its last DiLoCo round: the progress event's `round` block, without `peers`

    @classmethod
    def from_value(cls, value: Any) -> PeerProgress | None:
        """Parse a stored value; None for anything malformed (never trust the network)."""
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                peer_id=str(value["peer_id"]),
                session_id=str(value["session_id"]),
                step=int(value["step"]),
                outer_step=int(value["outer_step"]),
                tokens_per_second=float(value["tokens_per_second"]),
                samples=int(value["samples"]),
                tokens=int(value["tokens"]),
                wallet=None if value.get("wallet") is None else str(value["wallet"]),
                device=str(value.get("device", "cpu")),
                updated=float(value.get("updated", 0.0)),
                ready_round=int(value.get("ready_round", 0)),
                params_hash=None if value.get("params_hash") is None else str(value["params_hash"]),
                active=bool(value.get("active", True)),
                system=bounded_node(value.get("system")),
                round=bounded_round(value.get("round")),
            )
        except (KeyError, TypeError, ValueError):
            return None


# --- the machine and round blocks a peer publishes: kept only within bounds, field by field ---------
# (a peer may write anything in its own record; a malformed block is dropped, the record stays)
MAX_LABEL = 64
MAX_GPUS = 16
NODE_NUMBERS = {  # field: (type, upper bound)
    "host_cpus": (int, 1 << 16), "cpu_percent": (float, 100.0 * (1 << 16)),
    "ram_used_bytes": (int, 1 << 60), "ram_total_bytes": (int, 1 << 60), "process_rss_bytes": (int, 1 << 60),
    "net_sent_bytes_per_s": (float, 1e13), "net_recv_bytes_per_s": (float, 1e13),
    "disk_read_bytes_per_s": (float, 1e13), "disk_write_bytes_per_s": (float, 1e13),
}
GPU_NUMBERS = {"index": (int, 1 << 10), "util_percent": (float, 100.0), "mem_used_bytes": (int, 1 << 50),
               "mem_total_bytes": (int, 1 << 50)}
GPU_OPTIONAL = {"power_w": (float, 1e5), "temp_c": (float, 1e3)}
ROUND_NUMBERS = {
    "round": (int, 1 << 40), "round_seconds": (float, 1e8), "train_seconds": (float, 1e8),
    "averaging_seconds": (float, 1e8), "wait_seconds": (float, 1e8), "bytes_sent": (int, 1 << 60),
    "bytes_received": (int, 1 << 60), "group_size": (int, 1 << 20),
}


def _number(value: Any, kind: type, upper: float) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
        raise ValueError(f"{value!r} is not a number in [0, {upper}]")
    return kind(value)


def _label(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL:
        raise ValueError("not a short label")
    return value


def _numbers(value: dict, fields: dict[str, tuple[type, float]], optional: bool = False) -> dict[str, Any]:
    return {key: None if optional and value.get(key) is None else _number(value[key], *bound)
            for key, bound in fields.items()}


def bounded_node(value: Any) -> dict[str, Any] | None:
    """A peer's machine block with only known fields in range, or None."""
    if not isinstance(value, dict):
        return None
    try:
        node = {"node": _label(value["node"]), **_numbers(value, NODE_NUMBERS)}
        tps = value.get("tokens_per_second")
        node["tokens_per_second"] = None if tps is None else _number(tps, float, 1e12)
        node["time"] = _number(value["time"], float, 1e11)
        gpus = value.get("gpus")
        if gpus is not None:
            if not isinstance(gpus, list) or not 0 < len(gpus) <= MAX_GPUS:
                raise ValueError("gpus")
            node["gpus"] = [{"name": _label(g["name"]), **_numbers(g, GPU_NUMBERS), **_numbers(g, GPU_OPTIONAL, True)}
                            for g in gpus]
    except (KeyError, TypeError, ValueError):
        return None
    return node


def bounded_round(value: Any) -> dict[str, Any] | None:
    """A peer's last round block (numbers in range, `slowest_peer` a short label or null), or None."""
    if not isinstance(value, dict):
        return None
    try:
        slowest = value.get("slowest_peer")
        return {**_numbers(value, ROUND_NUMBERS), "slowest_peer": None if slowest is None else _label(slowest)}
    except (KeyError, TypeError, ValueError):
        return None


def progress_key(session_id: str) -> str:
    return f"cotrain/{session_id}/progress"


def publish_progress(dht: DHT, validator: RSASignatureValidator, progress: PeerProgress, ttl: float = DEFAULT_TTL) -> bool:
    """Store `progress` signed with `validator`'s key; expires `ttl` seconds from now."""
    now = get_dht_time()
    value = asdict(progress) | {"updated": now}
    return bool(
        dht.store(
            progress_key(progress.session_id),
            value,
            expiration_time=now + ttl,
            subkey=validator.local_public_key,
        )
    )


def fetch_progress(dht: DHT, session_id: str) -> list[PeerProgress]:
    """The live (unexpired, validly signed) progress records of a session, sorted by peer id."""
    ensure_signature_validator(dht)
    found = dht.get(progress_key(session_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    now = get_dht_time()
    records: dict[str, PeerProgress] = {}
    for entry in found.value.values():
        if getattr(entry, "expiration_time", 0) < now:
            continue
        record = PeerProgress.from_value(getattr(entry, "value", None))
        if record is None or record.session_id != session_id:
            continue
        previous = records.get(record.peer_id)
        if previous is None or record.updated > previous.updated:
            records[record.peer_id] = record
    return sorted(records.values(), key=lambda r: r.peer_id)


class ProgressPublisher:
    """Publishes `snapshot()` every `interval` seconds from a daemon thread until `stop()`.

    `snapshot` is called from that thread, so it must only read plain values.
    """

    def __init__(self, dht: DHT, snapshot: Callable[[], PeerProgress], interval: float = 3.0, ttl: float | None = None):
        self.dht = dht
        self.snapshot = snapshot
        self.interval = interval
        self.ttl = ttl if ttl is not None else max(3 * interval, 2.0)
        self.validator = signer(dht)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cotrain-progress", daemon=True)

    def start(self) -> ProgressPublisher:
        self._thread.start()
        return self

    def publish_now(self) -> None:
        try:
            publish_progress(self.dht, self.validator, self.snapshot(), ttl=self.ttl)
        except Exception as exc:  # a DHT hiccup must never stop training
            log.warning("could not publish progress to the DHT: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.publish_now()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
