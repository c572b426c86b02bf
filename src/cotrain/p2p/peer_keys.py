"""A peer's public key and the peer id it names, checked without hivemind.

The server verifies peers' signatures (wallet bindings) but never acts as a peer itself on that path, and
importing hivemind imports torch: seconds of start-up for every `cotrain up`. So the checking half lives
here, on `cryptography` alone, and speaks hivemind's formats exactly: keys as OpenSSH text, signatures as
base64 RSA-PSS (MGF1-SHA256, maximum salt) over SHA-256, and peer ids as libp2p derives them (the
sha2-256 multihash of the key's `PublicKey` protobuf). The peer's own key, which hivemind writes and
loads, stays in p2p/identity.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Protocol

import base58
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
LIBP2P_RSA_KEY_TYPE = 0  # libp2p crypto.proto: KeyType RSA
SHA2_256_MULTIHASH = b"\x12\x20"  # code 0x12, 32-byte digest


class OpenSSHKey(Protocol):
    """What hivemind's RSAPublicKey and PeerPublicKey both are: a key that writes itself as OpenSSH text."""

    def to_bytes(self) -> bytes: ...


class PeerPublicKey:
    """An RSA public key as hivemind's peers use it."""

    def __init__(self, key: rsa.RSAPublicKey) -> None:
        self._key = key

    def to_bytes(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether `signature` (base64, as hivemind's RSAPrivateKey.sign writes it) signs `data`."""
        try:
            self._key.verify(base64.b64decode(signature, validate=True), data, PSS, hashes.SHA256())
        except (ValueError, binascii.Error, InvalidSignature):
            return False
        return True


def public_key_from_text(text: str) -> PeerPublicKey:
    """Raises ValueError when `text` is not an OpenSSH RSA public key."""
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm) as exc:  # hostile text: any of these
        raise ValueError(f"not an OpenSSH public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    return PeerPublicKey(key)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def peer_id_of(public_key: OpenSSHKey) -> str:
    """The libp2p peer id (base58) of an RSA public key: the one hivemind's DHT has when its identity file
    holds the matching private key (libp2p peer-ids spec: the key's `PublicKey{Type, Data=DER}` protobuf,
    hashed with sha2-256, as a multihash)."""
    der = serialization.load_ssh_public_key(public_key.to_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = b"\x08" + _varint(LIBP2P_RSA_KEY_TYPE) + b"\x12" + _varint(len(der)) + der
    return base58.b58encode(SHA2_256_MULTIHASH + hashlib.sha256(encoded).digest()).decode()
