"""Commitments and receipts of a round speak for the key that signed them, on a real loopback DHT.

Two cotrain peers publish their commitment and receipt for a round; the reader (the server's node) gets both,
each credited to its signer. Plain hivemind clients then write into the same keys: signed with their own keys
but naming the honest peer, another round or session, or a time in the future, and unsigned subkeys. Only the
honest peer's records are read back; each forged entry is skipped alone and logged once.
"""

from __future__ import annotations

import logging

import pytest
from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from cotrain.p2p.dht import LOOPBACK_MADDRS, peer_id_of_owner, signer, start_dht, visible_maddrs
from cotrain.p2p.round_records import (
    commitment_key,
    fetch_commitments,
    fetch_receipts,
    publish_commitment,
    publish_receipt,
    receipt_key,
)
from cotrain.p2p.verification import Commitment, Receipt

ROUND = 4
H16 = "0123456789abcdef"


@pytest.fixture(scope="module")
def nodes():
    """The reader, two cotrain peers, two plain hivemind clients with keys of their own and one without the
    signature validator; each test uses its own session, so they share the nodes."""
    reader = start_dht()
    first = start_dht(initial_peers=visible_maddrs(reader))
    second = start_dht(initial_peers=visible_maddrs(reader))
    plain = {}
    for name, validating in (("impostor", True), ("stranger", True), ("unsigned", False)):
        validator = RSASignatureValidator(RSAPrivateKey()) if validating else None
        node = DHT(initial_peers=visible_maddrs(reader), start=True, host_maddrs=LOOPBACK_MADDRS,
                   record_validators=[validator] if validator else [])
        plain[name] = (node, validator)
    yield reader, first, second, plain
    for node in [*(node for node, _ in plain.values()), second, first, reader]:
        node.shutdown()


def _commitment(session: str, digest: str, peer_id: str = "whatever it says", **changes) -> Commitment:
    fields = dict(peer_id=peer_id, session_id=session, round=ROUND, base_hash=H16, update_hash=digest * 64,
                  shard_id=digest * 16, inner_steps=8, param_hashes=(H16, digest * 16), committed_at=0.0)
    return Commitment(**(fields | changes))


def _receipt(session: str, members: dict[str, str], peer_id: str = "whatever it says", **changes) -> Receipt:
    fields = dict(peer_id=peer_id, session_id=session, round=ROUND, members=members, result_hash="e" * 64,
                  signed_at=0.0)
    return Receipt(**(fields | changes))


def _store(node: DHT, key: str, subkey, body: dict) -> bool:
    return bool(node.store(key, body, expiration_time=get_dht_time() + 60, subkey=subkey))


def _subkeys_held(reader: DHT, key: str) -> int:
    found = reader.get(key, latest=True)
    return len(found.value) if found is not None else 0


def test_each_peers_commitment_and_receipt_is_credited_to_its_signer(nodes):
    reader, first, second, _ = nodes
    session = "honest"
    ids = str(first.peer_id), str(second.peer_id)
    before = get_dht_time()
    assert publish_commitment(first, signer(first), _commitment(session, "a"))
    assert publish_commitment(second, signer(second), _commitment(session, "b"))
    members = {ids[0]: "a" * 64, ids[1]: "b" * 64}
    for node in (first, second):
        assert publish_receipt(node, signer(node), _receipt(session, members))

    commitments = fetch_commitments(reader, session, ROUND)
    assert set(commitments) == set(ids)
    for peer_id, digest in zip(ids, "ab", strict=True):
        got = commitments[peer_id]
        assert got.peer_id == peer_id and got.update_hash == digest * 64 and got.param_hashes == (H16, digest * 16)
        assert before <= got.committed_at <= get_dht_time()  # stamped when published, not what the caller said
    receipts = fetch_receipts(second, session, ROUND)  # any node reads the same
    assert set(receipts) == set(ids)
    assert all(r.peer_id == p and r.members == members and r.signed_at >= before for p, r in receipts.items())
    assert fetch_commitments(reader, session, ROUND + 1) == {} and fetch_receipts(reader, "other", ROUND) == {}


def test_forged_entries_are_dropped_and_logged_once(nodes, caplog):
    reader, first, _, plain = nodes
    session = "forged"
    honest = str(first.peer_id)
    (impostor, impostor_key), (stranger, stranger_key), (unsigned, _) = plain["impostor"], plain["stranger"], \
        plain["unsigned"]
    impostor_id, stranger_id = (peer_id_of_owner(key.local_public_key) for key in (impostor_key, stranger_key))
    commit, receipt = commitment_key(session, ROUND), receipt_key(session, ROUND)
    now = get_dht_time()
    assert publish_commitment(first, signer(first), _commitment(session, "a"))
    assert publish_receipt(first, signer(first), _receipt(session, {honest: "a" * 64}))

    # signed by their own keys (the DHT keeps them) but speaking for another peer, round, session or time
    assert _store(impostor, commit, impostor_key.local_public_key,
                  _commitment(session, "f", honest, update_hash="f" * 64, committed_at=now).as_dict())
    assert _store(stranger, commit, stranger_key.local_public_key,
                  _commitment(session, "f", stranger_id, round=ROUND + 1, committed_at=now).as_dict())
    assert _store(impostor, receipt, impostor_key.local_public_key,
                  _receipt("elsewhere", {impostor_id: "f" * 64}, impostor_id, signed_at=now).as_dict())
    assert _store(stranger, receipt, stranger_key.local_public_key,
                  _receipt(session, {stranger_id: "f" * 64}, stranger_id, signed_at=now + 3600).as_dict())
    # unsigned subkeys: any node may write them, so they speak for nobody
    forged = _commitment(session, "f", honest, committed_at=now).as_dict()
    assert _store(unsigned, commit, b"forger", forged) and _store(unsigned, commit, honest.encode(), forged)
    assert _store(unsigned, receipt, b"forger", _receipt(session, {honest: "f" * 64}, honest, signed_at=now).as_dict())
    # under the honest peer's owner key without its signature, the DHT refuses the write itself
    assert not _store(unsigned, commit, signer(first).local_public_key, forged)
    assert (_subkeys_held(reader, commit), _subkeys_held(reader, receipt)) == (5, 4), \
        "the forged entries must reach the reader for this test to mean anything"

    with caplog.at_level(logging.WARNING, logger="cotrain.p2p.progress"):
        for _ in range(2):  # readers poll: each fault is logged once
            commitments, receipts = fetch_commitments(reader, session, ROUND), fetch_receipts(reader, session, ROUND)
            assert list(commitments) == [honest] and commitments[honest].update_hash == "a" * 64
            assert list(receipts) == [honest] and receipts[honest].members == {honest: "a" * 64}
    skipped = [r.getMessage() for r in caplog.records if "skipped a" in r.getMessage()]
    expected = [("commitment", impostor_id, "but is signed by"), ("commitment", stranger_id, "its round: 5"),
                ("receipt", impostor_id, "names session 'elsewhere'"), ("receipt", stranger_id, "in the future"),
                ("commitment", "forger", "no owner key"), ("receipt", "forger", "no owner key")]
    for kind, writer, why in expected:
        found = [m for m in skipped if f"skipped a {kind} record" in m and writer in m and why in m]
        assert len(found) == 1, (kind, writer, why, skipped)
    assert len(skipped) == 7  # the six above and the commitment under the honest peer's id, unsigned
