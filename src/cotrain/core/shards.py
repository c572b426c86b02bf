"""Round shards: the samples a DiLoCo peer trains on in one round, drawn from a public seed.

A peer's shard for round r is a pure function of (session, round, the hash of the global params
the round starts from, peer id) and the size of the training split, so any validator recomputes
it exactly and can check that the peer's update learned from its own shard more than from a
control shard (`random_shard_seed`) that no peer was given. The seed covers the start params, so
a shard is not known before the round's start params exist.

Shards of different peers are independent random draws: they overlap only as chance allows.
"""

from __future__ import annotations

import hashlib

import torch

# Not a possible peer id (hivemind peer ids are base58), so the control shard belongs to no peer.
CONTROL_PEER = "<control>"


def _digest(session_id: str, round_: int, base_hash: str, peer_id: str) -> bytes:
    if round_ < 0:
        raise ValueError(f"round must be >= 0, got {round_}")
    return hashlib.sha256(f"cotrain-shard|{session_id}|{round_}|{base_hash}|{peer_id}".encode()).digest()


def _seed_of(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def shard_seed(session_id: str, round_: int, base_hash: str, peer_id: str) -> int:
    """The seed of `peer_id`'s shard in round `round_` started from params `base_hash` (63 bits)."""
    if peer_id == CONTROL_PEER:
        raise ValueError(f"{CONTROL_PEER!r} names the control shard, not a peer")
    return _seed_of(_digest(session_id, round_, base_hash, peer_id))


def shard_id(session_id: str, round_: int, base_hash: str, peer_id: str) -> str:
    """16 hex naming that shard (the commitment's `shard_id`)."""
    if peer_id == CONTROL_PEER:
        raise ValueError(f"{CONTROL_PEER!r} names the control shard, not a peer")
    return _digest(session_id, round_, base_hash, peer_id)[:8].hex()


def random_shard_seed(session_id: str, round_: int, base_hash: str) -> int:
    """The seed of the round's control shard: assigned to no peer, drawn like a peer's."""
    return _seed_of(_digest(session_id, round_, base_hash, CONTROL_PEER))


def shard_indices(num_samples: int, shard_samples: int, seed: int) -> torch.Tensor:
    """The shard's sample indices (int64, distinct, in training order): the first `shard_samples`
    (at most `num_samples`) of a permutation of the split drawn on the CPU from `seed`, so every
    machine with the same torch gets the same shard. Costs O(num_samples) time and memory."""
    if num_samples <= 0 or shard_samples <= 0:
        raise ValueError(f"num_samples and shard_samples must be positive, got {num_samples}, {shard_samples}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(num_samples, generator=generator, device="cpu")[: min(shard_samples, num_samples)].clone()


def shard_batch(indices: torch.Tensor, inner_step: int, batch_size: int) -> torch.Tensor:
    """The whole batch (all processes of the peer) of 0-based `inner_step`: the shard read in
    order in blocks of `batch_size`, wrapping to its start when it runs out."""
    if len(indices) == 0 or batch_size <= 0 or inner_step < 0:
        raise ValueError(f"need a non-empty shard, batch_size > 0 and inner_step >= 0, got "
                         f"{len(indices)}, {batch_size}, {inner_step}")
    positions = (inner_step * batch_size + torch.arange(batch_size)) % len(indices)
    return indices[positions]
