"""A session's peer bound to a wallet, so that the peer's contribution is paid to that wallet.

A binding is proven either by the wallet's signature of the binding statement (`cotrain join --wallet`,
`cotrain rewards bind`: the key stays on the volunteer's machine, only the signature is sent), or by the
signed-in wallet binding a peer to itself. Settlement pays a peer only to the wallet proven here.
"""

from __future__ import annotations

import time

from aptos_sdk import ed25519
from aptos_sdk.account_address import AccountAddress
from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.chain.errors import ChainError
from cotrain.chain.orm import BindingProof, PeerBinding
from cotrain.chain.signin import derived_auth_keys


class BadBindingSignature(ChainError):
    """The binding is not signed by the wallet it names."""


class AlreadyBound(ChainError):
    """The peer is bound to another wallet in this session already."""


def binding_statement(session_id: str, peer_id: str, address: str) -> bytes:
    """What a wallet signs to bind a peer to itself (`cotrain join --wallet`)."""
    return f"CoTrain peer binding\nsession: {session_id}\npeer: {peer_id}\nwallet: {address}".encode()


def sign_binding(wallet_key: ed25519.PrivateKey, session_id: str, peer_id: str) -> dict[str, str]:
    """For `cotrain join --wallet`: the body of POST /api/v1/rewards/bindings, signed with the wallet's key
    (the key stays on the volunteer's machine; only the signature is sent)."""
    public_key = wallet_key.public_key()
    address = str(AccountAddress.from_key(public_key))
    signature = wallet_key.sign(binding_statement(session_id, peer_id, address))
    return {"sessionId": session_id, "peerId": peer_id, "address": address, "publicKey": str(public_key),
            "signature": str(signature)}


def check_binding_signature(session_id: str, peer_id: str, address: str, public_key: str, signature: str) -> None:
    """Raises BadBindingSignature unless `signature` is the wallet's signature of the binding statement."""
    try:
        key = ed25519.PublicKey.from_str(public_key)
        ok = key.verify(binding_statement(session_id, peer_id, address), ed25519.Signature.from_str(signature))
        owns = AccountAddress.from_str_relaxed(address).address in derived_auth_keys(key)
    except Exception:
        ok = owns = False
    if not (ok and owns):
        raise BadBindingSignature(f"The binding of peer {peer_id} to wallet {address} is not signed by that "
                                  "wallet's key; sign it again with `cotrain join --wallet` using the wallet's key.")


def bind_peer(db: Session, session_id: str, peer_id: str, address: str, proof: BindingProof) -> PeerBinding:
    """Record a proven binding (SIGNATURE: checked with check_binding_signature; OWNER: the signed-in
    user who started the peer). Binding the same peer to the same wallet again changes nothing."""
    addr = str(AccountAddress.from_str_relaxed(address))
    row = db.scalars(select(PeerBinding).where(PeerBinding.session_id == session_id,
                                               PeerBinding.peer_id == peer_id)).first()
    if row is not None:
        if row.address != addr:
            raise AlreadyBound(f"Peer {peer_id} is already bound to {row.address} in session {session_id}.")
        return row
    row = PeerBinding(session_id=session_id, peer_id=peer_id, address=addr, proof=proof, created_at=time.time())
    db.add(row)
    db.flush()
    return row


def bound_wallets(db: Session, session_id: str) -> dict[str, str]:
    """Peer id → the wallet proven for it, in one session."""
    return {b.peer_id: b.address for b in db.scalars(select(PeerBinding).where(PeerBinding.session_id == session_id))}
