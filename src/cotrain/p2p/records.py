"""Signed, expiring per-peer progress records on the DHT.

Every peer of a session stores one record under the key `cotrain/<session>/progress`, in a
subkey that is its own RSA public key. The DHT's `RSASignatureValidator` makes that subkey
writable only by the key's owner, so a record cannot be forged or overwritten by another peer.
Records expire `ttl` seconds after they were written: a peer that stops publishing (killed,
disconnected) disappears from `fetch_progress` within `ttl`.

The record itself, `PeerProgress`, lives in `cotrain.p2p.progress` (no hivemind import there). The
server lists participants with `fetch_progress(dht, session_id)`; contribution accounting uses
`samples`/`tokens` of the last record it saw per peer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict

from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

from cotrain.p2p.dht import ensure_signature_validator, signer
from cotrain.p2p.progress import PeerProgress

__all__ = ["DEFAULT_TTL", "ProgressPublisher", "fetch_progress", "progress_key", "publish_progress"]

log = logging.getLogger(__name__)

DEFAULT_TTL = 9.0


def progress_key(session_id: str) -> str:
    return f"cotrain/{session_id}/progress"


def publish_progress(dht: DHT, validator: RSASignatureValidator, progress: PeerProgress,
                     ttl: float = DEFAULT_TTL) -> bool:
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
