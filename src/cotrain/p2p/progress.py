"""The DHT progress record: what one peer of a session publishes about itself, snake_case.

One type for this datum everywhere: the peer publishes it (`cotrain.p2p.records`), the server
reads it back from the DHT, the chain keeps its counters (`cotrain.chain.orm.ProgressSnapshot`,
whose columns are a subset of these fields) and tallies contributions from it. This module has no
hivemind import, so the chain and the server can use the type cheaply; a value read from the
network goes through `PeerProgress.parse` (or `from_value`), which keeps only known fields within bounds:
every number non-negative, finite and below a cap no honest peer comes near.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


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
        """Parse a stored value; None for anything malformed or out of range (never trust the network)."""
        try:
            return cls.parse(value)
        except BadRecord:
            return None

    @classmethod
    def parse(cls, value: Any) -> PeerProgress:
        """Parse a stored value, every number range-checked (`RECORD_NUMBERS`); raises BadRecord saying why."""
        if not isinstance(value, dict):
            raise BadRecord("it is not a mapping")
        try:
            numbers: dict[str, Any] = {name: _field(name, value.get(name, 0) if name in DEFAULTED else value[name])
                       for name in RECORD_NUMBERS}
            return cls(
                peer_id=_text(value["peer_id"]),
                session_id=_text(value["session_id"]),
                **numbers,
                wallet=None if value.get("wallet") is None else _text(value["wallet"]),
                device=_text(value.get("device", "cpu")),
                params_hash=None if value.get("params_hash") is None else _text(value["params_hash"]),
                active=bool(value.get("active", True)),
                system=bounded_node(value.get("system")),
                round=bounded_round(value.get("round")),
            )
        except KeyError as exc:
            raise BadRecord(f"it has no {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise BadRecord(str(exc)) from None

    def out_of_range(self) -> str | None:
        """Why this record's numbers cannot be true (the same checks as `parse`), or None: for records
        built in-process, or read back from the database, before they are kept or tallied."""
        for name in RECORD_NUMBERS:
            try:
                _field(name, getattr(self, name))
            except ValueError as exc:
                return str(exc)
        return None


class BadRecord(ValueError):
    """A progress record that is malformed or out of range: it is skipped alone."""


_reported: set[tuple[str, str, str]] = set()
MAX_REPORTED = 10_000  # a flood of junk records must not grow the log-once memory without bound


def skipped_once(session_id: str, writer: str, why: str, kind: str = "progress") -> None:
    """Log a skipped record once per (session, writer, kind of record and of fault): readers poll every few
    seconds."""
    fault = re.sub(r"\d+(\.\d+)?", "#", why.split(":")[0])  # "its time is 3600 s ..." and "3599 s ..." alike
    seen = (session_id, writer, f"{kind}|{fault}")
    if seen in _reported:
        return
    if len(_reported) >= MAX_REPORTED:
        _reported.clear()
    _reported.add(seen)
    log.warning("skipped a %s record of session %s written by %s: %s", kind, session_id, writer, why)


# --- the record's own numbers: non-negative, finite, below caps no honest peer comes near ----------
MAX_TEXT = 200  # the database's column width for ids, wallets and device names
MAX_INT32 = (1 << 31) - 1  # steps and rounds are 32-bit columns
MAX_TOKENS = 10**12  # per peer and session: weeks of the fastest GPU on the tiny-to-medium models trained here
MAX_TOKENS_PER_SECOND = 1e8  # 50× the fastest device ceiling of cotrain.chain.contributions
MAX_TIME = 1e11  # DHT time (unix seconds); readers also refuse records from the future
RECORD_NUMBERS: dict[str, tuple[type, float]] = {
    "step": (int, MAX_INT32), "outer_step": (int, MAX_INT32), "ready_round": (int, MAX_INT32),
    "tokens_per_second": (float, MAX_TOKENS_PER_SECOND), "samples": (int, MAX_TOKENS), "tokens": (int, MAX_TOKENS),
    "updated": (float, MAX_TIME),
}
DEFAULTED = frozenset({"ready_round", "updated"})  # older peers may leave them out


def _field(name: str, value: Any) -> int | float:
    try:
        return _number(value, *RECORD_NUMBERS[name])
    except ValueError as exc:
        raise ValueError(f"its {name}: {exc}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{str(value)[:40]!r} is not a string of at most {MAX_TEXT} characters")
    return value


# --- the machine and round blocks a peer publishes: kept only within bounds, field by field ---------
# (a peer may write anything in its own record; a malformed block is dropped, the record stays)
MAX_LABEL = 64
MAX_GPUS = 16
Bounds = dict[str, tuple[type, float]]  # field: (its type, upper bound); the lower bound is 0
NODE_NUMBERS: Bounds = {
    "host_cpus": (int, 1 << 16), "cpu_percent": (float, 100.0 * (1 << 16)),
    "ram_used_bytes": (int, 1 << 60), "ram_total_bytes": (int, 1 << 60), "process_rss_bytes": (int, 1 << 60),
    "net_sent_bytes_per_s": (float, 1e13), "net_recv_bytes_per_s": (float, 1e13),
    "disk_read_bytes_per_s": (float, 1e13), "disk_write_bytes_per_s": (float, 1e13),
}
GPU_NUMBERS: Bounds = {"index": (int, 1 << 10), "util_percent": (float, 100.0), "mem_used_bytes": (int, 1 << 50),
               "mem_total_bytes": (int, 1 << 50)}
GPU_OPTIONAL: Bounds = {"power_w": (float, 1e5), "temp_c": (float, 1e3)}
ROUND_NUMBERS: Bounds = {
    "round": (int, 1 << 40), "round_seconds": (float, 1e8), "train_seconds": (float, 1e8),
    "averaging_seconds": (float, 1e8), "wait_seconds": (float, 1e8), "bytes_sent": (int, 1 << 60),
    "bytes_received": (int, 1 << 60), "group_size": (int, 1 << 20),
}


def _number(value: Any, kind: type, upper: float) -> int | float:
    """`value` as `kind` when it is a number in [0, upper] (NaN and infinities are not; a float for an
    integer field must be whole)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
        raise ValueError(f"{value!r} is not a number in [0, {upper:g}]")
    if kind is int and value != int(value):
        raise ValueError(f"{value!r} is not a whole number")
    return kind(value)


def _label(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL:
        raise ValueError("not a short label")
    return value


def _numbers(value: dict[str, Any], fields: Mapping[str, tuple[type, float]], optional: bool = False) -> dict[str, Any]:
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

