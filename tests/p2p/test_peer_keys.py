"""p2p/peer_keys.py checks peers' keys without hivemind, so it must agree with hivemind exactly: a
signature hivemind's key makes verifies, anything else does not, and the peer id is the DHT's."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

from cotrain.p2p.identity import load_or_create_identity
from cotrain.p2p.peer_keys import peer_id_of, public_key_from_text


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("peer") / "p2p-identity.key"
    return path, load_or_create_identity(path)


def test_a_hivemind_signature_verifies_and_nothing_else_does(identity) -> None:
    _, key = identity
    public = public_key_from_text(key.get_public_key().to_bytes().decode())
    signature = key.sign(b"session s1, wallet 0x1")
    assert public.verify(b"session s1, wallet 0x1", signature)
    assert not public.verify(b"session s1, wallet 0x2", signature)
    flipped = bytearray(base64.b64decode(signature))
    flipped[7] ^= 1
    assert not public.verify(b"session s1, wallet 0x1", base64.b64encode(bytes(flipped)))
    assert not public.verify(b"session s1, wallet 0x1", b"not base64 !!")
    assert not public.verify(b"session s1, wallet 0x1", b"")


def test_the_peer_id_is_the_one_the_dht_derives(identity) -> None:
    path, key = identity
    text = key.get_public_key().to_bytes().decode()
    assert peer_id_of(public_key_from_text(text)) == PeerID.from_identity(path.read_bytes()).to_base58()
    assert peer_id_of(key.get_public_key()) == peer_id_of(public_key_from_text(text))
    # the protobuf written by hand is hivemind's
    der = serialization.load_ssh_public_key(text.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()[:2] == b"\x08\x00"


@pytest.mark.parametrize("text", ["", "ssh-rsa", "ssh-rsa AAAA!!", "-----BEGIN PUBLIC KEY-----"])
def test_text_that_is_no_rsa_key_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        public_key_from_text(text)


def test_an_ed25519_key_is_not_a_peer_key() -> None:
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    with pytest.raises(ValueError, match="not an RSA key"):
        public_key_from_text(other)
