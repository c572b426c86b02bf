"""Signed commitments and receipts of a DiLoCo round on the DHT.

A peer's `Commitment` for round r lives under `cotrain/<session>/commit/<r>`, a member's `Receipt` under
`cotrain/<session>/receipt/<r>`, each in a subkey that is the writer's RSA public key, so only that key's owner
can write it (as progress records, `cotrain.p2p.records`). Readers credit every entry to the peer id of the key
that signed it and drop an entry that is unsigned, names another peer, session or round, is out of range, or
was written in the future: each skipped alone, logged once (`records.fetch_signed`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, TypeVar

from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

from cotrain.p2p.dht import peer_id_of_owner
from cotrain.p2p.progress import BadRecord
from cotrain.p2p.records import fetch_signed
from cotrain.p2p.verification import Commitment, Exclusions, Receipt

__all__ = ["DEFAULT_TTL", "commitment_key", "exclusions_key", "fetch_commitments", "fetch_exclusions",
           "fetch_receipts", "publish_commitment", "publish_exclusions", "publish_receipt", "receipt_key"]

DEFAULT_TTL = 600.0  # long enough for a validator to judge the round after its averaging


def commitment_key(session_id: str, round_: int) -> str:
    return f"cotrain/{session_id}/commit/{round_}"


def receipt_key(session_id: str, round_: int) -> str:
    return f"cotrain/{session_id}/receipt/{round_}"


def exclusions_key(session_id: str) -> str:
    return f"cotrain/{session_id}/excluded"


def publish_exclusions(dht: DHT, validator: RSASignatureValidator, exclusions: Exclusions,
                       ttl: float = DEFAULT_TTL) -> bool:
    """Store a validator's exclusion list signed with its key, stamped `updated` = now (it replaces the last one)."""
    now = get_dht_time()
    signed = replace(exclusions, peer_id=_own_id(validator), updated=now)
    return _store(dht, validator, exclusions_key(exclusions.session_id), signed.as_dict(), now, ttl)


def fetch_exclusions(dht: DHT, session_id: str, validators: Collection[str]) -> dict[str, int]:
    """Peer id → the first round it is excluded from, by any of `validators` (peer ids this peer trusts); lists
    signed by anybody else are ignored (anyone can write one under their own key)."""
    found = fetch_signed(dht, exclusions_key(session_id), session_id, Exclusions.parse, lambda e: e.updated,
                         kind="exclusions")
    excluded: dict[str, int] = {}
    for exclusions in found:
        if exclusions.peer_id in validators:
            for peer, from_round in exclusions.excluded.items():
                excluded[peer] = min(from_round, excluded.get(peer, from_round))
    return excluded


def publish_commitment(dht: DHT, validator: RSASignatureValidator, commitment: Commitment,
                       ttl: float = DEFAULT_TTL) -> bool:
    """Store `commitment` signed with `validator`'s key, under that key's peer id and stamped `committed_at` =
    the DHT time now (whatever the record said: it speaks for its signer, when it was written)."""
    now = get_dht_time()
    signed = replace(commitment, peer_id=_own_id(validator), committed_at=now)
    return _store(dht, validator, commitment_key(commitment.session_id, commitment.round), signed.as_dict(), now, ttl)


def publish_receipt(dht: DHT, validator: RSASignatureValidator, receipt: Receipt, ttl: float = DEFAULT_TTL) -> bool:
    """Store `receipt` signed with `validator`'s key, under that key's peer id and stamped `signed_at` = now."""
    now = get_dht_time()
    signed = replace(receipt, peer_id=_own_id(validator), signed_at=now)
    return _store(dht, validator, receipt_key(receipt.session_id, receipt.round), signed.as_dict(), now, ttl)


def fetch_commitments(dht: DHT, session_id: str, round_: int) -> dict[str, Commitment]:
    """The live, signed, in-range commitments of a session's round, by the peer id that signed each."""
    found = fetch_signed(dht, commitment_key(session_id, round_), session_id, _of_round(Commitment.parse, round_),
                         lambda c: c.committed_at, kind="commitment")
    return {c.peer_id: c for c in found}


def fetch_receipts(dht: DHT, session_id: str, round_: int) -> dict[str, Receipt]:
    """The live, signed, in-range receipts of a session's round, by the peer id that signed each."""
    found = fetch_signed(dht, receipt_key(session_id, round_), session_id, _of_round(Receipt.parse, round_),
                         lambda r: r.signed_at, kind="receipt")
    return {r.peer_id: r for r in found}


R = TypeVar("R", Commitment, Receipt)


def _of_round(parse: Callable[[Any], R], round_: int) -> Callable[[Any], R]:
    """`parse`, refusing a record that names another round than the key it was read from."""
    def parsed(value: Any) -> R:
        record = parse(value)
        if record.round != round_:
            raise BadRecord(f"its round: {record.round}, read for round {round_}")
        return record
    return parsed


def _own_id(validator: RSASignatureValidator) -> str:
    own = peer_id_of_owner(validator.local_public_key)
    if own is None:  # the validator's own key always parses; this would be a hivemind change
        raise ValueError("the signing key names no peer id")
    return own


def _store(dht: DHT, validator: RSASignatureValidator, key: str, value: dict[str, Any], now: float,
           ttl: float) -> bool:
    return bool(dht.store(key, value, expiration_time=now + ttl, subkey=validator.local_public_key))
