"""The peer's half of a binding as one copy-pasteable token: `cotrain rewards peer-signature` prints it on the
peer's machine, and the Rewards page takes it, has the browser wallet sign the wallet's half and submits both.
The token is base64url of JSON {session, wallet, peerId, peerPublicKey, peerSignature}; it holds no secret."""

from __future__ import annotations

import base64
import binascii
import json

from cotrain.chain.bindings import SignedBinding
from cotrain.chain.errors import ChainError

PREFIX = "cotrain-peer-half:"


class BadPeerToken(ChainError):
    """The pasted text is not a token printed by `cotrain rewards peer-signature`."""


def peer_half_token(session_id: str, address: str, half: dict[str, str]) -> str:
    """`half` is `sign_peer_half`'s answer for (session_id, address)."""
    data = {"session": session_id, "wallet": address, **half}
    return PREFIX + base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def read_peer_half_token(text: str) -> SignedBinding:
    """The binding the token's peer half is for, without the wallet's half yet."""
    body = "".join(text.split()).removeprefix(PREFIX)  # pasting may break it into lines
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        fields = [data[k] for k in ("session", "peerId", "wallet", "peerPublicKey", "peerSignature")]
        if not all(isinstance(f, str) and f for f in fields):
            raise ValueError
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise BadPeerToken("This is not a peer token; paste the whole line that `cotrain rewards peer-signature` "
                           "printed on the peer's machine.") from None
    return SignedBinding(*fields)
