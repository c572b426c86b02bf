"""Kept updates: one averager keeps its round's pseudo-gradient, another downloads it through its own
averager process over loopback, bit for bit, and the bytes count as verification, not averaging."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest
import torch
from hivemind.p2p import PeerID

from cotrain.p2p.averager import PART_VALUES, ExactAverager
from cotrain.p2p.dht import start_dht, visible_maddrs

NUMEL = 2 * PART_VALUES + 12_345  # three parts, the last one short


def sha256(flat: torch.Tensor) -> str:
    return hashlib.sha256(flat.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[ExactAverager, ExactAverager, ExactAverager]]:
    """A and B average NUMEL values; C (same class and prefix) averages fewer, so what it serves is the
    wrong size for B."""
    first = start_dht()
    dhts = [first] + [start_dht(initial_peers=visible_maddrs(first)) for _ in range(2)]
    settings = dict(start=True, prefix="update_test", target_group_size=None, min_group_size=2,
                    min_matchmaking_time=2.0, request_timeout=1.0)
    averagers = (ExactAverager([torch.zeros(NUMEL)], dhts[0], **settings),
                 ExactAverager([torch.zeros(NUMEL)], dhts[1], **settings),
                 ExactAverager([torch.zeros(1000)], dhts[2], **settings))
    try:
        yield averagers
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()


def test_nothing_kept_yet_downloads_none(peers):
    a, b, _ = peers
    assert b.download_update(a.peer_id.to_base58(), timeout=10) is None
    assert a.download_update(a.peer_id.to_base58(), timeout=10) is None


def test_kept_updates_download_bit_exact_with_their_round(peers):
    a, b, _ = peers
    generator = torch.Generator().manual_seed(3)
    averaging_before = a.bytes_moved(), b.bytes_moved()
    for round_ in (3, 4):
        update = torch.randn(NUMEL, generator=generator) * 1e-3
        update[7] = float("-0.0")  # exact bytes, not just equal values
        expected = sha256(update)
        a.keep_update(round_, update)
        update.add_(1.0)  # what was kept is a copy
        sent_before, received_before = a.verification_bytes()[0], b.verification_bytes()[1]
        downloaded = b.download_update(a.peer_id.to_base58(), timeout=20)
        assert downloaded is not None
        got_round, flat = downloaded
        assert got_round == round_
        assert flat.dtype == torch.float32 and flat.shape == (NUMEL,)
        assert sha256(flat) == expected and str(flat[7].item()) == "-0.0"
        assert a.verification_bytes()[0] - sent_before == 4 * NUMEL
        assert b.verification_bytes()[1] - received_before == 4 * NUMEL
    assert (a.bytes_moved(), b.bytes_moved()) == averaging_before
    # a peer asked for its own id answers from its own buffer, moving nothing
    own = a.download_update(a.peer_id.to_base58(), timeout=5)
    assert own is not None and own[0] == 4 and torch.equal(own[1], flat)


def test_the_last_two_rounds_are_served_by_round(peers):
    """A validator asks for round r after the peer has kept r + 1 (its next round is under way): still served;
    round r - 1 is gone, and a round asked for is never answered with another."""
    a, b, _ = peers
    kept = {round_: torch.full((NUMEL,), float(round_)) for round_ in (7, 8, 9)}
    for round_, update in kept.items():
        a.keep_update(round_, update)
    peer = a.peer_id.to_base58()
    for round_ in (8, 9):
        got = b.download_update(peer, timeout=20, round_=round_)
        assert got is not None and got[0] == round_ and torch.equal(got[1], kept[round_])
    assert b.download_update(peer, timeout=20, round_=7) is None  # replaced by round 9
    newest = b.download_update(peer, timeout=20)
    assert newest is not None and newest[0] == 9
    own = a.download_update(peer, timeout=5, round_=8)
    assert own is not None and own[0] == 8 and torch.equal(own[1], kept[8])


def test_unknown_or_malformed_peer_gives_none_within_the_timeout(peers):
    _, b, _ = peers
    nobody = PeerID(b"\x12\x20" + hashlib.sha256(b"no such peer").digest()).to_base58()
    started = time.monotonic()
    assert b.download_update(nobody, timeout=3) is None
    assert time.monotonic() - started < 3 + 2
    assert b.download_update("not-a-peer-id", timeout=3) is None


def test_an_update_of_the_wrong_size_is_refused(peers):
    a, b, c = peers
    c.keep_update(5, torch.ones(1000))
    received_before = b.verification_bytes()[1]
    assert b.download_update(c.peer_id.to_base58(), timeout=10) is None
    assert b.verification_bytes()[1] == received_before  # refused on its announced size, before any part
    assert c.download_update(a.peer_id.to_base58(), timeout=10) is None


def test_keep_update_refuses_a_tensor_unlike_the_averaged_one(peers):
    a, _, _ = peers
    with pytest.raises(ValueError):
        a.keep_update(6, torch.zeros(NUMEL - 1))
    with pytest.raises(ValueError):
        a.keep_update(6, torch.zeros(NUMEL, dtype=torch.float64))
    with pytest.raises(ValueError):
        a.keep_update(-1, torch.zeros(NUMEL))
