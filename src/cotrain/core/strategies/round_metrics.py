"""Where one DiLoCo round's time and bytes went: the `round` block of its progress event.

A round runs, on each peer, from the end of the previous round (the first: from the end of
setup) to the end of its outer step, and splits into
- train: the inner steps (with any evaluation or checkpoint between them), until this peer is
  ready for the round;
- wait: waiting for the group: for the other live peers to be ready (the stragglers) and for
  matchmaking to assemble the group;
- averaging: the pseudo-gradient, the all-reduce itself (timed inside the averager's process) and
  the outer optimizer step.
What is left (publishing the record, sizing the groups) is milliseconds. Bytes are the
averager's exact payload counts over the round. The slowest peer is the group member whose inner
steps took longest, from the train seconds every member sends in the all-reduce's gather.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class RoundClock:
    started: float  # time.perf_counter() when the round began
    bytes_at_start: tuple[int, int]  # (sent, received) then
    train: float = 0.0
    averaging: float = 0.0
    wait: float = 0.0

    @classmethod
    def start(cls, comm_bytes: tuple[int, int]) -> RoundClock:
        return cls(time.perf_counter(), comm_bytes)

    def inner_steps_done(self) -> None:
        self.train = time.perf_counter() - self.started

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the time spent inside to `averaging` or `wait`."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(**{name: time.perf_counter() - began})

    def add(self, averaging: float = 0.0, wait: float = 0.0) -> None:
        self.averaging += averaging
        self.wait += wait

    def block(self, round_: int, peer: str, comm_bytes: tuple[int, int],
              group_train: Mapping[str, float]) -> dict[str, Any]:
        """The event's `round` block. `group_train`: each group member's train seconds by short peer id;
        `peers` lists this peer alone (the others' bytes come in their own records)."""
        sent, received = (now - then for now, then in zip(comm_bytes, self.bytes_at_start))
        return {
            "round": round_,
            "round_seconds": round(time.perf_counter() - self.started, 3),
            "train_seconds": round(self.train, 3),
            "averaging_seconds": round(self.averaging, 3),
            "wait_seconds": round(self.wait, 3),
            "bytes_sent": int(sent),
            "bytes_received": int(received),
            "group_size": len(group_train),
            "slowest_peer": slowest_peer(group_train),
            "peers": [{"peer": peer, "train_seconds": round(self.train, 3), "bytes_sent": int(sent),
                       "bytes_received": int(received)}],
        }


def short_peer_id(peer_id: str) -> str:
    """How the `system` and `round` blocks name a peer: the first 16 characters of its id."""
    return str(peer_id)[:16]


def slowest_peer(group_train: Mapping[str, float]) -> str | None:
    """The member whose inner steps took longest; None for a group of one (nobody waited)."""
    if len(group_train) < 2:
        return None
    return max(group_train, key=lambda peer: group_train[peer])


def train_seconds_of(gathered: Mapping[Any, Any]) -> dict[str, float]:
    """Each member's train seconds from the all-reduce's gathered metadata (0 where a member sent none)."""
    seconds = {}
    for peer_id, metadata in gathered.items():
        value = metadata.get("train_seconds") if isinstance(metadata, dict) else None
        seconds[short_peer_id(str(peer_id))] = float(value) if isinstance(value, int | float) and value >= 0 else 0.0
    return seconds
