"""Start a hivemind DHT node the way every CoTrain process needs it.

Every node carries an `RSASignatureValidator`, so records whose subkey holds a public key
(`[owner:...]`) must be signed by that key's owner: a peer can only write its own progress.

A peer is its signing key: the node's libp2p identity and the key that signs its records are one RSA
key, so its peer id (`dht.peer_id`) is the libp2p hash of the public key every reader recovers from
the signed subkey (`peer_id_of_owner`). Rewards follow that key, never what a record says about itself.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from cotrain.p2p.errors import PeerNetworkError
from cotrain.p2p.identity import load_identity
from cotrain.p2p.lifetime import dies_with_parent
from cotrain.p2p.peer_keys import peer_id_of

LOOPBACK_MADDRS = ["/ip4/127.0.0.1/tcp/0"]


def start_dht(
    initial_peers: Sequence[str] = (),
    host_maddrs: Sequence[str] = LOOPBACK_MADDRS,
    announce_maddrs: Sequence[str] = (),
    client_mode: bool = False,
    startup_timeout: float = 60.0,
    private_key: RSAPrivateKey | None = None,
    identity_path: str | Path | None = None,
) -> DHT:
    """A running DHT node, joined to `initial_peers` (a new network if empty).

    One RSA key is both the node's libp2p identity and the key that signs its records: the one in
    `identity_path` (created on first use from `private_key` or a new key, reused after a restart, so the
    peer id survives it), else `private_key`, else a new key. `signer(dht)` returns the validator holding it.
    Raises a PeerNetworkError that says what to check when the peers cannot be reached.
    """
    kwargs: dict = dict(host_maddrs=list(host_maddrs), client_mode=client_mode, startup_timeout=startup_timeout)
    if announce_maddrs:
        kwargs["announce_maddrs"] = list(announce_maddrs)
    try:
        with _identity_file(private_key, identity_path) as (key, path, is_new):
            validator = RSASignatureValidator(key)
            with dies_with_parent():
                dht = DHT(
                    initial_peers=list(initial_peers) or None,
                    start=True,
                    record_validators=[validator],
                    identity_path=path,
                    check_if_identity_free=not is_new,  # a key made just now is nobody else's
                    **kwargs,
                )
    except Exception as exc:  # hivemind raises plain Exceptions from its P2P daemon
        where = f"initial peers {list(initial_peers)}" if initial_peers else f"host addresses {list(host_maddrs)}"
        raise PeerNetworkError(
            f"Could not start a DHT node with {where}: {exc}. Check that the addresses are full multiaddrs "
            "(/ip4/HOST/tcp/PORT/p2p/PEER_ID) of a running peer and that the port is reachable, and that no "
            "other running peer uses the same identity file; `cotrain doctor` checks this machine."
        ) from exc
    dht._cotrain_has_validator = True
    dht._cotrain_signer = validator
    return dht


@contextmanager
def _identity_file(private_key: RSAPrivateKey | None,
                   identity_path: str | Path | None) -> Iterator[tuple[RSAPrivateKey, str, bool]]:
    """(the signing key, a libp2p identity file holding it, whether the key was made now). Without
    `identity_path` the file is temporary: the daemon reads it at start-up."""
    if identity_path is not None and Path(identity_path).is_file():
        yield load_identity(Path(identity_path)), str(identity_path), False
        return
    key = private_key if private_key is not None else RSAPrivateKey()
    if identity_path is not None:
        Path(identity_path).parent.mkdir(parents=True, exist_ok=True)
        _write_identity(Path(identity_path), key)
        yield key, str(identity_path), True
        return
    with tempfile.TemporaryDirectory(prefix="cotrain-identity-") as folder:
        path = Path(folder) / "identity.key"
        _write_identity(path, key)
        yield key, str(path), True


def _write_identity(path: Path, key: RSAPrivateKey) -> None:
    """The key in libp2p's identity format (what hivemind's `P2P.generate_identity` writes), owner-only."""
    protobuf = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes())
    path.write_bytes(protobuf.SerializeToString())
    os.chmod(path, 0o400)


def peer_id_of_owner(subkey: object) -> str | None:
    """The peer id of the key named by a signed subkey (`[owner:<ssh-rsa key>]`, exactly), or None when the
    subkey names no key: such an entry was never signed (any node may write it), so it speaks for nobody."""
    if not isinstance(subkey, bytes):
        return None
    found = OWNER_SUBKEY.fullmatch(subkey)
    if found is None:
        return None
    try:
        return peer_id_of(RSAPublicKey.from_bytes(found.group(1)))
    except ValueError:
        return None


OWNER_SUBKEY = re.compile(RSASignatureValidator.PUBLIC_KEY_REGEX, re.DOTALL)


def visible_maddrs(dht: DHT) -> list[str]:
    """The multiaddrs other peers can pass as initial_peers to reach this node."""
    return [str(addr) for addr in dht.get_visible_maddrs()]


def ensure_signature_validator(dht: DHT) -> None:
    """Add the signature validator to a DHT started elsewhere (e.g. by the server) so it can
    verify and strip signed records. Idempotent: hivemind merges duplicate validators."""
    if not getattr(dht, "_cotrain_has_validator", False):
        dht.add_validators([RSASignatureValidator()])
        dht._cotrain_has_validator = True


def signer(dht: DHT) -> RSASignatureValidator:
    """The validator whose key signs this node's records (for a DHT not started by `start_dht`, the
    process-wide key, whose peer id is not the node's)."""
    found = getattr(dht, "_cotrain_signer", None)
    return found if found is not None else RSASignatureValidator()
