"""Splitting a session's reward pool pro rata to verified contributions, in integers (smallest units).

Largest-remainder method: everyone gets floor(pool * weight / total); the units left over go one each to
the largest fractional remainders, ties broken by address, so the same inputs always give the same split
and the parts always sum to the pool.
"""

from __future__ import annotations

from collections.abc import Mapping


def split_pool(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`weights`: address → verified tokens. Returns address → amount for every positive weight."""
    if amount < 0:
        raise ValueError("a reward pool cannot be negative")
    positive = {addr: w for addr, w in weights.items() if w > 0}
    total = sum(positive.values())
    if total == 0 or amount == 0:
        return {addr: 0 for addr in positive}
    shares = {addr: amount * w // total for addr, w in positive.items()}
    left = amount - sum(shares.values())
    by_remainder = sorted(positive, key=lambda addr: (-((amount * positive[addr]) % total), addr))
    for addr in by_remainder[:left]:
        shares[addr] += 1
    return shares
