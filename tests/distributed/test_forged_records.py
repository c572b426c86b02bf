"""A progress record speaks for the key that signed it and for nothing else, on a real loopback DHT.

An honest cotrain peer publishes; adversaries write into the same DHT key with plain hivemind clients:
a validly signed record (their own key) naming the honest peer or an invented one, an unsigned record
(a node without the signature validator), and signed records whose numbers cannot be true. The reader
(`fetch_progress`, what the server runs) credits the honest peer alone, each bad entry skipped by itself.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import pytest
from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from cotrain.p2p.dht import LOOPBACK_MADDRS, peer_id_of_owner, signer, start_dht, visible_maddrs
from cotrain.p2p.progress import PeerProgress
from cotrain.p2p.records import fetch_progress, progress_key, publish_progress

SESSION = "forged"
INVENTED = "QmUQWXKeTU7aVJbzjVMqZrXt4QMBAGsFU2ZmjL2bWZShxB"


@pytest.fixture
def network():
    """The server's node (the reader), an honest cotrain peer and the plain hivemind clients a test adds."""
    server = start_dht()
    honest = start_dht(initial_peers=visible_maddrs(server))
    plain: list[DHT] = []

    def plain_client(validating: bool = True) -> tuple[DHT, RSASignatureValidator | None]:
        """A bare hivemind DHT node with a key of its own (or no signature validator at all)."""
        validator = RSASignatureValidator(RSAPrivateKey()) if validating else None
        node = DHT(initial_peers=visible_maddrs(server), start=True, host_maddrs=LOOPBACK_MADDRS,
                   record_validators=[validator] if validator else [])
        plain.append(node)
        return node, validator

    yield server, honest, plain_client
    for node in [*plain, honest, server]:
        node.shutdown()


def _body(peer_id: str, **changes) -> dict:
    record = PeerProgress(peer_id=peer_id, session_id=SESSION, step=10, outer_step=1, tokens_per_second=500.0,
                          samples=10, tokens=640, wallet="0xa1", device="cpu")
    return asdict(record) | {"updated": get_dht_time()} | changes


def _store(node: DHT, subkey, body: dict) -> bool:
    return bool(node.store(progress_key(SESSION), body, expiration_time=get_dht_time() + 60, subkey=subkey))


def _subkeys_held(server: DHT) -> set:
    found = server.get(progress_key(SESSION), latest=True)
    return set(found.value) if found is not None else set()


def _publish_honest(honest: DHT) -> str:
    assert publish_progress(honest, signer(honest), PeerProgress(
        peer_id="whatever it says", session_id=SESSION, step=10, outer_step=1, tokens_per_second=500.0,
        samples=10, tokens=640, wallet="0xa1", device="cpu"), ttl=60)
    return str(honest.peer_id)


def test_a_signed_record_naming_another_peer_gets_nothing(network):
    server, honest, plain_client = network
    honest_id = _publish_honest(honest)
    impostor, impostor_key = plain_client()
    inventor, inventor_key = plain_client()
    # validly signed by their own keys (the DHT stores them), but speaking for someone else
    assert _store(impostor, impostor_key.local_public_key, _body(honest_id, tokens=3000, samples=47))
    assert _store(inventor, inventor_key.local_public_key, _body(INVENTED, tokens=3000, samples=47))
    # a plain client naming its own key is a peer like any other: the rule is "the signer", not "cotrain"
    newcomer, newcomer_key = plain_client()
    newcomer_id = peer_id_of_owner(newcomer_key.local_public_key)
    assert _store(newcomer, newcomer_key.local_public_key, _body(newcomer_id, tokens=1280, samples=20))
    assert len(_subkeys_held(server)) == 4, "the forged entries must reach the reader for this test to mean anything"

    seen = {r.peer_id: r for r in fetch_progress(server, SESSION)}
    assert set(seen) == {honest_id, newcomer_id}
    assert (seen[honest_id].tokens, seen[honest_id].samples) == (640, 10)  # credited as before, not overwritten
    assert seen[newcomer_id].tokens == 1280


def test_an_unsigned_record_is_dropped(network):
    server, honest, plain_client = network
    honest_id = _publish_honest(honest)
    unsigned, _ = plain_client(validating=False)
    # no owner key in the subkey: nothing to verify, so any node may write it and the DHT keeps it
    assert _store(unsigned, b"forger", _body(INVENTED, tokens=3000, samples=47))
    assert _store(unsigned, honest_id.encode(), _body(honest_id, tokens=3000, samples=47))
    # under the honest peer's owner key, without its signature, the DHT refuses the write itself
    assert not _store(unsigned, signer(honest).local_public_key, _body(honest_id, tokens=3000, samples=47))
    assert len(_subkeys_held(server)) == 3

    assert [(r.peer_id, r.tokens) for r in fetch_progress(server, SESSION)] == [(honest_id, 640)]


def test_records_that_cannot_be_true_are_skipped_alone_and_logged_once(network, caplog):
    server, honest, plain_client = network
    honest_id = _publish_honest(honest)
    bad = {"tokens 1e13": dict(tokens=10**13), "NaN tokens": dict(tokens=float("nan")),
           "negative samples": dict(samples=-5), "infinite speed": dict(tokens_per_second=float("inf")),
           "huge round": dict(outer_step=1 << 40), "from the future": dict(updated=get_dht_time() + 3600)}
    writers = {}
    for what, change in bad.items():
        node, key = plain_client()
        writers[what] = peer_id_of_owner(key.local_public_key)
        assert _store(node, key.local_public_key, _body(writers[what], **change)), what
    assert len(_subkeys_held(server)) == 1 + len(bad)

    with caplog.at_level(logging.WARNING, logger="cotrain.p2p.progress"):
        for _ in range(3):  # the server polls: each fault is logged once, not at every read
            assert [(r.peer_id, r.tokens) for r in fetch_progress(server, SESSION)] == [(honest_id, 640)]
    skipped = [r.getMessage() for r in caplog.records if "skipped a progress record" in r.getMessage()]
    for what, writer in writers.items():
        assert sum(writer in message for message in skipped) == 1, (what, skipped)
    assert any("in the future" in message for message in skipped)
    assert any("its tokens: nan" in message for message in skipped)
