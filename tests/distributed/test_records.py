"""Signed progress records on a real two-node DHT on loopback."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from cotrain.p2p.dht import peer_id_of_owner, signer, start_dht, visible_maddrs
from cotrain.p2p.progress import BadRecord, PeerProgress
from cotrain.p2p.records import ProgressPublisher, fetch_progress, progress_key, publish_progress


@pytest.fixture
def two_nodes():
    first = start_dht(private_key=RSAPrivateKey())
    second = start_dht(initial_peers=visible_maddrs(first), private_key=RSAPrivateKey())
    yield first, second
    second.shutdown()
    first.shutdown()


def _progress(peer_id: str, step: int = 5) -> PeerProgress:
    return PeerProgress(
        peer_id=peer_id, session_id="s1", step=step, outer_step=1, tokens_per_second=123.5,
        samples=40, tokens=2560, wallet="0xabc", device="cpu",
    )


def test_records_are_shared_and_signed(two_nodes):
    """A record is credited to the key that signed it: the peer id of that key, which is the node's own."""
    first, second = two_nodes
    assert publish_progress(first, signer(first), _progress("A"), ttl=30)
    assert publish_progress(second, signer(second), _progress("B", step=7), ttl=30)
    seen = {r.peer_id: r for r in fetch_progress(first, "s1")}
    assert set(seen) == {str(first.peer_id), str(second.peer_id)}
    assert str(first.peer_id) == peer_id_of_owner(signer(first).local_public_key)
    mine, theirs = seen[str(first.peer_id)], seen[str(second.peer_id)]
    assert theirs.step == 7 and mine.step == 5 and mine.wallet == "0xabc" and mine.updated > 0
    assert fetch_progress(second, "other-session") == []


def test_a_restarted_peer_keeps_its_key_and_peer_id(tmp_path, two_nodes):
    first, _ = two_nodes
    identity = tmp_path / "peer" / "p2p-identity.key"
    peer = start_dht(initial_peers=visible_maddrs(first), identity_path=identity)
    before = str(peer.peer_id)
    peer.shutdown()
    again = start_dht(initial_peers=visible_maddrs(first), identity_path=identity)
    try:
        assert str(again.peer_id) == before == peer_id_of_owner(signer(again).local_public_key)
    finally:
        again.shutdown()


def test_a_peer_cannot_write_another_peers_record(two_nodes):
    first, second = two_nodes
    publish_progress(first, signer(first), _progress("A"), ttl=30)
    forged = _progress("A", step=999)
    # `second` stores under `first`'s public key: its signature does not match, so it is rejected.
    stored = second.store(
        progress_key("s1"), forged.__dict__, expiration_time=get_dht_time() + 30,
        subkey=signer(first).local_public_key,
    )
    assert not stored
    assert [(r.peer_id, r.step) for r in fetch_progress(second, "s1")] == [(str(first.peer_id), 5)]


def test_records_expire_when_a_peer_stops_publishing(two_nodes):
    first, second = two_nodes
    publisher = ProgressPublisher(second, lambda: _progress("B"), interval=0.5, ttl=2.0).start()
    deadline = time.monotonic() + 10
    while not fetch_progress(first, "s1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [r.peer_id for r in fetch_progress(first, "s1")] == [str(second.peer_id)]
    publisher.stop()
    deadline = time.monotonic() + 10
    while fetch_progress(first, "s1") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fetch_progress(first, "s1") == []


def test_a_plain_dht_can_read_records(two_nodes):
    """The server may start its DHT without cotrain's helper; fetch_progress adds the validator."""
    from hivemind import DHT

    first, _ = two_nodes
    publish_progress(first, signer(first), _progress("A"), ttl=30)
    plain = DHT(initial_peers=visible_maddrs(first), start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    try:
        assert [r.peer_id for r in fetch_progress(plain, "s1")] == [str(first.peer_id)]
    finally:
        plain.shutdown()


def test_malformed_values_are_ignored():
    assert PeerProgress.from_value({"peer_id": "x"}) is None
    assert PeerProgress.from_value("junk") is None
    assert RSASignatureValidator  # imported for the public API check


@pytest.mark.parametrize("change, why", [
    ({"tokens": 10**13}, "its tokens"), ({"tokens": float("nan")}, "its tokens"), ({"samples": -1}, "its samples"),
    ({"tokens_per_second": float("inf")}, "its tokens_per_second"), ({"outer_step": 1 << 40}, "its outer_step"),
    ({"tokens": True}, "its tokens"), ({"step": 2.5}, "whole number"), ({"updated": -1.0}, "its updated"),
    ({"peer_id": "x" * 500}, "at most 200"),
])
def test_numbers_out_of_range_are_refused_with_why(change, why):
    good = asdict(_progress("A"))
    assert PeerProgress.parse(good) == _progress("A") and _progress("A").out_of_range() is None
    with pytest.raises(BadRecord, match=why):
        PeerProgress.parse(good | change)
    if "peer_id" not in change:  # a record built in-process is held to the same numbers
        found = replace(_progress("A"), **change).out_of_range()
        assert found is not None and why in found
