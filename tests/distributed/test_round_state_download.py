"""Round states: a peer's averager serves the files of its training state at commit points (core/round_states.py)
to another peer's averager over loopback, byte for byte, within a size cap, counted as verification bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cotrain.p2p.averager import STATE_PART_BYTES, ExactAverager
from cotrain.p2p.dht import start_dht, visible_maddrs

CAP = 3 * STATE_PART_BYTES


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[tuple[ExactAverager, ExactAverager, Path]]:
    """A keeps round states under its directory (served up to CAP bytes); B keeps none."""
    states = tmp_path_factory.mktemp("round-states")
    first = start_dht()
    second = start_dht(initial_peers=visible_maddrs(first))
    settings = dict(start=True, prefix="state_test", target_group_size=None, min_group_size=2,
                    min_matchmaking_time=2.0, request_timeout=1.0)
    a = ExactAverager([torch.zeros(10)], first, round_states=states, max_round_state_bytes=CAP, **settings)
    b = ExactAverager([torch.zeros(10)], second, **settings)
    try:
        yield a, b, states
    finally:
        for part in (a, b, first, second):
            part.shutdown()


def write(states: Path, round_: int, index: int, data: bytes) -> None:
    path = states / str(round_) / f"{index}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_a_kept_state_downloads_byte_exact_and_counts_as_verification(peers):
    a, b, states = peers
    data = os.urandom(2 * STATE_PART_BYTES + 777)  # three parts, the last one short
    write(states, 5, 4, data)
    write(states, 5, 0, b"round start")
    averaging_before = a.bytes_moved(), b.bytes_moved()
    sent_before, received_before = a.verification_bytes()[0], b.verification_bytes()[1]
    assert b.download_round_state(a.peer_id.to_base58(), 5, 4, timeout=20) == data
    assert a.verification_bytes()[0] - sent_before == len(data)
    assert b.verification_bytes()[1] - received_before == len(data)
    assert (a.bytes_moved(), b.bytes_moved()) == averaging_before
    assert b.download_round_state(a.peer_id.to_base58(), 5, 0, timeout=20) == b"round start"
    # its own id: read from its own directory, moving nothing
    assert a.download_round_state(a.peer_id.to_base58(), 5, 4, timeout=5) == data


def test_an_absent_state_or_a_peer_keeping_none_gives_none(peers):
    a, b, _ = peers
    assert b.download_round_state(a.peer_id.to_base58(), 5, 2, timeout=10) is None  # that commit point is not kept
    assert b.download_round_state(a.peer_id.to_base58(), 6, 0, timeout=10) is None  # nor that round
    assert a.download_round_state(b.peer_id.to_base58(), 5, 4, timeout=10) is None  # b keeps no states at all


def test_states_over_the_cap_are_neither_served_nor_accepted(peers):
    a, b, states = peers
    write(states, 8, 0, b"x" * (CAP + 1))
    assert b.download_round_state(a.peer_id.to_base58(), 8, 0, timeout=10) is None  # a does not serve it
    write(states, 8, 2, b"y" * 5000)
    started = b.verification_bytes()[1]
    assert b.download_round_state(a.peer_id.to_base58(), 8, 2, timeout=10, max_bytes=4999) is None  # b refuses it
    assert b.verification_bytes()[1] == started  # refused on the announced size, before any part
    assert b.download_round_state(a.peer_id.to_base58(), 8, 2, timeout=10, max_bytes=5000) == b"y" * 5000
