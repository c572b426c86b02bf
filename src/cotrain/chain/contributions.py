"""DHT progress records → per-peer contribution totals, with plausibility checks.

The distributed part publishes, per peer, cumulative counters (`samples`, `tokens`), the current
`outer_step`, the reported `tokens_per_second` and `device` (cotrain.p2p.progress.PeerProgress). The server
collects snapshots of these records while a session runs; this module turns them into one total per peer
(a record's `peer_id` is the key that signed it, never a name it chose: `cotrain.p2p.records.fetch_progress`
drops the others, and `cotrain.chain.settlement.in_range` any record whose numbers cannot be true) and flags
what cannot be true — a peer that claims more tokens/s than its hardware allows, more tokens
than its outer rounds (or its samples, or the observed time) can explain — excluding it with a reason the
UI shows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aptos_sdk.account_address import AccountAddress

from cotrain.chain.orm import ContributionStatus
from cotrain.p2p.progress import PeerProgress

# Training throughput ceilings (tokens/s) per device family, for the smallest models; generous on
# purpose — they catch impossible claims, not slow peers. Matched as a substring of the device name.
DEVICE_TOKENS_PER_SECOND = {
    "h200": 2_000_000,
    "h100": 1_600_000,
    "a100": 800_000,
    "l40": 500_000,
    "a10": 300_000,
    "4090": 500_000,
    "3090": 300_000,
    "t4": 120_000,
    "mps": 60_000,
    "cpu": 30_000,
}
UNKNOWN_DEVICE_TOKENS_PER_SECOND = 400_000


@dataclass(frozen=True)
class Limits:
    """What the session's configuration allows. `tokens_per_outer_round` = inner_steps × batch_size ×
    seq_length of the session (None: not checked); `slack` absorbs counting noise."""

    tokens_per_outer_round: int | None = None
    seq_length: int | None = None
    slack: float = 1.25
    device_tokens_per_second: Mapping[str, float] = field(default_factory=lambda: DEVICE_TOKENS_PER_SECOND)

    def device_ceiling(self, device: str) -> float:
        name = device.lower()
        for family, ceiling in self.device_tokens_per_second.items():
            if family in name:
                return ceiling
        return UNKNOWN_DEVICE_TOKENS_PER_SECOND


@dataclass(frozen=True)
class Contribution:
    session_id: str
    peer_id: str
    address: str | None
    samples: int
    tokens: int
    outer_rounds: int
    compute_seconds: float
    tokens_per_second: float
    device: str
    status: ContributionStatus
    reason: str  # why excluded; "" when verified

    @property
    def verified(self) -> bool:
        return self.status == ContributionStatus.VERIFIED


def _address(wallet: str | None) -> str | None:
    if not wallet:
        return None
    try:
        return str(AccountAddress.from_str_relaxed(wallet.strip()))
    except Exception:
        return None


def tally(
    records: Iterable[PeerProgress],
    limits: Limits | None = None,
    bound_wallets: Mapping[str, str] | None = None,
) -> list[Contribution]:
    """One Contribution per peer, sorted by peer id. `bound_wallets` (peer id → address), when given, are
    the proven bindings; a peer whose record names another wallet, or none, is excluded."""
    limits = limits or Limits()
    by_peer: dict[str, list[PeerProgress]] = defaultdict(list)
    for record in records:
        by_peer[record.peer_id].append(record)
    return [_one_peer(peer, sorted(snaps, key=lambda r: r.updated), limits, bound_wallets)
            for peer, snaps in sorted(by_peer.items())]


def _one_peer(
    peer: str, snaps: list[PeerProgress], limits: Limits, bound: Mapping[str, str] | None
) -> Contribution:
    first, last = snaps[0], snaps[-1]
    tokens = max(r.tokens for r in snaps)
    samples = max(r.samples for r in snaps)
    # the rounds the peer was there for: the span of its outer steps, not the distinct values seen,
    # which depend on how often the monitor sampled (fast rounds slip between two snapshots)
    rounds = max(r.outer_step for r in snaps) - min(r.outer_step for r in snaps) + 1
    reported_tps = max(r.tokens_per_second for r in snaps)
    address = _address(last.wallet)
    ceiling = limits.device_ceiling(last.device)
    compute = tokens / reported_tps if reported_tps > 0 else 0.0
    reasons: list[str] = []

    if address is None:
        reasons.append("no valid wallet address is bound to this peer; join with `cotrain join --wallet 0x...`")
    elif bound is not None and bound.get(peer) != address:
        reasons.append(f"the wallet {address} was not proven for this peer (no signed binding from that wallet)")
    if any(b.tokens < a.tokens or b.samples < a.samples for a, b in zip(snaps, snaps[1:], strict=False)):
        reasons.append("its token or sample counters went backwards between reports")
    if reported_tps > ceiling * limits.slack:
        reasons.append(f"it reports {reported_tps:,.0f} tokens/s, more than a {last.device or 'device'} can do "
                       f"(at most {ceiling:,.0f})")
    if limits.tokens_per_outer_round is not None:
        allowed = limits.tokens_per_outer_round * rounds * limits.slack
        if tokens > allowed:
            reasons.append(f"it claims {tokens:,} tokens, more than its {rounds} outer round(s) can explain "
                           f"(at most {allowed:,.0f})")
    if limits.seq_length is not None and tokens > samples * limits.seq_length * limits.slack:
        reasons.append(f"it claims {tokens:,} tokens from {samples:,} samples of at most {limits.seq_length} tokens")
    span = last.updated - first.updated
    if span > 0 and (last.tokens - first.tokens) > ceiling * span * limits.slack:
        reasons.append(f"it processed {last.tokens - first.tokens:,} tokens in {span:,.0f} s, faster than a "
                       f"{last.device or 'device'} can")
    if tokens <= 0:
        reasons.append("it reported no processed tokens")

    return Contribution(
        session_id=last.session_id,
        peer_id=peer,
        address=address,
        samples=samples,
        tokens=tokens,
        outer_rounds=rounds,
        compute_seconds=round(compute, 3),
        tokens_per_second=float(reported_tps),
        device=last.device,
        status=ContributionStatus.EXCLUDED if reasons else ContributionStatus.VERIFIED,
        reason="; ".join(reasons),
    )


def weights(contributions: Iterable[Contribution]) -> dict[str, int]:
    """Address → verified tokens (a wallet running several peers gets their sum)."""
    total: dict[str, int] = defaultdict(int)
    for c in contributions:
        if c.verified and c.address:
            total[c.address] += c.tokens
    return dict(total)
