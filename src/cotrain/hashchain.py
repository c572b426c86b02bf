"""The hash chain both append-only logs use: the chain's contribution ledger and the server's audit log.

Each entry's hash covers its own fields and the previous entry's hash, so editing, deleting or reordering
an entry breaks every link after it:

    link = sha3_256( sha3_256(b"COTRAIN::" + kind) || BCS(field_1, ..., field_n) || prev_hash (32 bytes) )

Fields are BCS-encoded (an int as u64, little-endian; a str as its ULEB128 length then UTF-8), the same
bytes aptos-sdk's Serializer writes, so a ledger entry's hash can be re-derived with any BCS library.
Structured bodies go in as one field: their canonical JSON (sorted keys, no spaces, ASCII only).
Pure functions, no dependencies: the ledger (cotrain.chain) and the audit log (cotrain.server) import this.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

GENESIS = "0" * 64  # the previous hash of a chain's first entry


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no whitespace, ASCII only (so the bytes hashed never vary)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def domain(kind: str) -> bytes:
    """The domain separator of one kind of chain, so an entry of one chain is never valid in another."""
    return hashlib.sha3_256(f"COTRAIN::{kind}".encode()).digest()


def _uleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bcs(field: int | str) -> bytes:
    if isinstance(field, bool):
        raise TypeError("hash chain fields are ints or strings, not booleans")
    if isinstance(field, int):
        if not 0 <= field < 2**64:
            raise ValueError(f"{field} does not fit an unsigned 64-bit integer")
        return field.to_bytes(8, "little")
    data = field.encode()
    return _uleb128(len(data)) + data


def link_hash(kind: str, fields: Sequence[int | str], prev_hash: str) -> str:
    """The hash of one entry of a `kind` chain: its `fields` (ints and strings), then `prev_hash`."""
    payload = b"".join(_bcs(f) for f in fields) + bytes.fromhex(prev_hash)
    return hashlib.sha3_256(domain(kind) + payload).hexdigest()


def micros(seconds: float) -> int:
    """A timestamp as whole microseconds, the form in which times are hashed (floats do not round-trip
    through every database exactly; 6 decimals do)."""
    return round(seconds * 1_000_000)
