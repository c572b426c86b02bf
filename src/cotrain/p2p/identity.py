"""A peer's identity: the RSA key in its libp2p identity file, and the peer id derived from it.

hivemind writes the identity file (`P2P.generate_identity`: a libp2p `PrivateKey` protobuf holding an RSA
key) and the DHT's peer id is the libp2p hash of that key's public half, so whoever holds the file is the
peer: its signature proves a binding (`cotrain join --wallet-key-file`), and `peer_id_of` lets a server
check that a public key is the one a peer id names, without any network (p2p/peer_keys.py, which the
server uses without importing hivemind).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import DecodeError
from hivemind.p2p import P2P
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey

IDENTITY_FILE = "p2p-identity.key"


def identity_path(checkpoint_root: str | Path | None, session_id: str) -> Path:
    """Where a peer of `session_id` keeps its identity, beside its checkpoints (`checkpoint.output_path`, default
    the home's): a restarted peer, and the `cotrain join` that bound it, keep its peer id."""
    from cotrain.paths import Layout

    return Path(checkpoint_root or Layout.from_env().checkpoints) / session_id / IDENTITY_FILE


def load_or_create_identity(path: Path) -> RSAPrivateKey:
    """The peer's RSA key from its identity file, written first (mode 0400, as hivemind does) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        P2P.generate_identity(str(path))
    return load_identity(path)


def load_identity(path: Path) -> RSAPrivateKey:
    """The peer's RSA key from an existing identity file; OSError or ValueError when it cannot be read."""
    try:
        der = crypto_pb2.PrivateKey.FromString(path.read_bytes()).data
    except DecodeError:
        raise ValueError(f"{path} is not a libp2p identity file") from None
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key.__setstate__({"_private_key": der})  # hivemind's own (pickle) way to rebuild a key from DER bytes
    return key
