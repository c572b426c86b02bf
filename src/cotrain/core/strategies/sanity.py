"""What an honest DiLoCo peer checks before something it got from the network touches its model.

- The group's averaged pseudo-gradient: finite, and not absurdly larger than the peer's own update (an average
  of honest updates is never larger than the largest of them; one member's huge update is).
- A global state downloaded to catch up: its parameters must hash to what a quorum of the live peers publish for
  that outer step in their signed progress records (`params_hash`), so one peer cannot hand out a model of its
  own (for instance one it made by applying an average the others refused).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

import torch

MAX_AVERAGE_RATIO = 10.0  # an averaged update this many times the peer's own norm is refused


class PublishedState(Protocol):
    outer_step: int
    params_hash: str | None


def averaged_update_problem(averaged: torch.Tensor, own_norm: float) -> str | None:
    """Why the averaged pseudo-gradient must not be applied, or None when it may."""
    bad = int((~torch.isfinite(averaged)).sum())
    if bad:
        return f"it holds {bad} NaN or infinite values"
    norm = float(torch.linalg.vector_norm(averaged))
    if own_norm > 0 and norm > MAX_AVERAGE_RATIO * own_norm:
        return (f"its norm {norm:.4g} is over {MAX_AVERAGE_RATIO:g} times this peer's own update's ({own_norm:.4g}): "
                "a member sent an absurd update")
    return None


def downloaded_state_problem(state_hash: str, outer_step: int, records: Iterable[PublishedState],
                             needed: int) -> str | None:
    """Why a downloaded global state for `outer_step` hashed `state_hash` must not be loaded, or None: at least
    `needed` live peers (the quorum that can apply a round) must publish that hash for that step, so one peer
    cannot hand out a state of its own."""
    published = Counter(r.params_hash for r in records if r.outer_step == outer_step and r.params_hash)
    vouching = published.get(state_hash, 0)
    if vouching >= needed:
        return None
    return (f"its parameters hash to {state_hash}, which {vouching} live peer(s) publish for outer step "
            f"{outer_step}; {needed} are needed")
