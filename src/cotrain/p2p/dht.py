"""Start a hivemind DHT node the way every CoTrain process needs it.

Every node carries an `RSASignatureValidator`, so records whose subkey holds a public key
(`[owner:...]`) must be signed by that key's owner: a peer can only write its own progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hivemind import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils.crypto import RSAPrivateKey

from cotrain.p2p.errors import PeerNetworkError
from cotrain.p2p.lifetime import dies_with_parent

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

    `identity_path` keeps the peer id across restarts. `private_key` signs this node's records (default: the
    process-wide key); `signer(dht)` returns the validator holding it. Raises a RuntimeError that says what to
    check when the peers cannot be reached.
    """
    kwargs: dict = dict(host_maddrs=list(host_maddrs), client_mode=client_mode, startup_timeout=startup_timeout)
    if announce_maddrs:
        kwargs["announce_maddrs"] = list(announce_maddrs)
    if identity_path is not None:  # a stable peer id: created on first use, reused after a restart
        Path(identity_path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["identity_path"] = str(identity_path)
    validator = RSASignatureValidator(private_key)
    try:
        with dies_with_parent():
            dht = DHT(
                initial_peers=list(initial_peers) or None,
                start=True,
                record_validators=[validator],
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
    """The validator whose key signs this node's records."""
    found = getattr(dht, "_cotrain_signer", None)
    return found if found is not None else RSASignatureValidator()
