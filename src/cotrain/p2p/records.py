"""Signed, expiring per-peer progress records on the DHT.

Every peer of a session stores one record under the key `cotrain/<session>/progress`, in a
subkey that is its own RSA public key. The DHT's `RSASignatureValidator` makes that subkey
writable only by the key's owner, so a record cannot be forged or overwritten by another peer.
Records expire `ttl` seconds after they were written: a peer that stops publishing (killed,
disconnected) disappears from `fetch_progress` within `ttl`.

A record speaks for the key that signed it, nothing else: `fetch_progress` credits each entry to the
peer id of the public key in its subkey (`cotrain.p2p.dht.peer_id_of_owner`) and drops an entry with no
owner key (an unsigned subkey: any node can write one), one whose body names another peer, and one with
a number out of range or a time in the future. Each dropped entry is skipped alone, logged once with why.

The record itself, `PeerProgress`, lives in `cotrain.p2p.progress` (no hivemind import there). The
server lists participants with `fetch_progress(dht, session_id)`; contribution accounting uses
`samples`/`tokens` of the last record it saw per peer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol, TypeVar

from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

from cotrain.p2p.dht import ensure_signature_validator, peer_id_of_owner, signer
from cotrain.p2p.progress import BadRecord, PeerProgress, skipped_once

__all__ = ["DEFAULT_TTL", "ProgressPublisher", "fetch_progress", "fetch_signed", "progress_key", "publish_progress"]

log = logging.getLogger(__name__)

DEFAULT_TTL = 9.0
MAX_CLOCK_SKEW = 30.0  # seconds a record's `updated` may be ahead of the reader's DHT time


def progress_key(session_id: str) -> str:
    return f"cotrain/{session_id}/progress"


def publish_progress(dht: DHT, validator: RSASignatureValidator, progress: PeerProgress,
                     ttl: float = DEFAULT_TTL) -> bool:
    """Store `progress` signed with `validator`'s key, under the peer id of that key (whatever
    `progress.peer_id` said: a record can only speak for its signer); expires `ttl` seconds from now."""
    now = get_dht_time()
    value = asdict(progress) | {"peer_id": peer_id_of_owner(validator.local_public_key), "updated": now}
    return bool(
        dht.store(
            progress_key(progress.session_id),
            value,
            expiration_time=now + ttl,
            subkey=validator.local_public_key,
        )
    )


def fetch_progress(dht: DHT, session_id: str) -> list[PeerProgress]:
    """The live (unexpired, signed, in range) progress records of a session, one per signing key, sorted by
    peer id."""
    return fetch_signed(dht, progress_key(session_id), session_id, PeerProgress.parse, lambda r: r.updated)


class SignedRecord(Protocol):
    """A record that names its writer and its session (checked against the signer and the session read)."""

    @property
    def peer_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...


R = TypeVar("R", bound=SignedRecord)


def fetch_signed(dht: DHT, key: str, session_id: str, parse: Callable[[Any], R], written_at: Callable[[R], float],
                 kind: str = "progress") -> list[R]:
    """The live entries under `key`, each parsed by `parse` (which raises BadRecord) and credited to the key that
    signed its subkey, sorted by peer id. An entry that is unsigned, names another peer or session, or was
    written (`written_at`, DHT time) in the future is skipped alone and logged once as a bad `kind` record."""
    ensure_signature_validator(dht)
    found = dht.get(key, latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    now = get_dht_time()
    records = []
    for subkey, entry in found.value.items():
        if getattr(entry, "expiration_time", 0) < now:
            continue
        try:
            records.append(_credited(session_id, subkey, getattr(entry, "value", None), now, parse, written_at))
        except BadRecord as exc:
            skipped_once(session_id, peer_id_of_owner(subkey) or repr(subkey)[:60], str(exc), kind)
    return sorted(records, key=lambda r: r.peer_id)


def _credited(session_id: str, subkey: Any, value: Any, now: float, parse: Callable[[Any], R],
              written_at: Callable[[R], float]) -> R:
    """The record of one subkey, credited to the key that signed it; BadRecord when it speaks for nobody,
    for someone else, or says what cannot be true."""
    signer_id = peer_id_of_owner(subkey)
    if signer_id is None:
        raise BadRecord("it carries no owner key (an unsigned subkey any node can write)")
    record = parse(value)
    if record.peer_id != signer_id:
        raise BadRecord(f"it names peer {record.peer_id[:60]!r} but is signed by {signer_id}")
    if record.session_id != session_id:
        raise BadRecord(f"it names session {record.session_id[:60]!r}")
    if written_at(record) > now + MAX_CLOCK_SKEW:
        raise BadRecord(f"its time is {written_at(record) - now:.0f} s in the future")
    return record  # its peer id is its signer's (checked above)


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
