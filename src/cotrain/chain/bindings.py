"""A session's peer bound to a wallet, so that the peer's contribution is paid to that wallet.

A binding needs two signatures, one by each side: the peer's key (the RSA key of its libp2p identity, from
which its peer id derives and which signs its DHT records) signs (session, wallet), and the wallet signs
(session, peer id). Neither can be made without the other's holder agreeing, so a session owner cannot take a
volunteer's pay by binding the volunteer's peer to the owner's wallet, and nobody can bind a wallet they do
not hold. `cotrain join --wallet-key-file` (or `cotrain rewards bind`) makes both on the volunteer's machine;
only the signatures are sent. Settlement pays a peer only to the wallet proven here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from aptos_sdk import ed25519
from aptos_sdk.account_address import AccountAddress
from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.chain.errors import ChainError
from cotrain.chain.orm import BindingProof, PeerBinding
from cotrain.chain.signin import SignInError, check_signed_text, derived_auth_keys
from cotrain.p2p.peer_keys import peer_id_of, public_key_from_text

if TYPE_CHECKING:  # hivemind imports torch: the server, which only verifies bindings, starts without it
    from hivemind.utils.crypto import RSAPrivateKey

RETRY = ("run `cotrain join --wallet-key-file` (or `cotrain rewards bind`) on the peer's machine, which signs "
         "both halves")


class BadBindingSignature(ChainError):
    """One side's signature of the binding is missing or does not verify."""


class AlreadyBound(ChainError):
    """The peer is bound to another wallet in this session already."""


def peer_statement(session_id: str, address: str) -> bytes:
    """What the peer's key signs: it works for `address` in this session."""
    return f"CoTrain peer binding, the peer's half\nsession: {session_id}\nwallet: {address}".encode()


def wallet_statement(session_id: str, peer_id: str) -> bytes:
    """What the wallet signs: it accepts `peer_id`'s work in this session."""
    return f"CoTrain peer binding, the wallet's half\nsession: {session_id}\npeer: {peer_id}".encode()


@dataclass(frozen=True)
class SignedBinding:
    """Both halves of a binding, as POST /api/v1/rewards/bindings receives them (camelCase there)."""

    session_id: str
    peer_id: str
    address: str
    peer_public_key: str | None = None  # OpenSSH RSA text
    peer_signature: str | None = None  # base64, hivemind's RSA-PSS
    wallet_public_key: str | None = None  # Ed25519, 0x hex
    wallet_signature: str | None = None
    # set when a browser wallet signed: the wallet-standard full message (APTOS, address:, application:, chainId:,
    # message: <the wallet's statement>, nonce:) that `wallet_signature` signs instead of the bare statement
    wallet_full_message: str | None = None

    def body(self) -> dict[str, str | None]:
        words = {"session_id": "sessionId", "peer_id": "peerId", "peer_public_key": "peerPublicKey",
                 "peer_signature": "peerSignature", "wallet_public_key": "walletPublicKey",
                 "wallet_signature": "walletSignature", "wallet_full_message": "walletFullMessage"}
        return {words.get(name, name): value for name, value in asdict(self).items()}


def sign_peer_half(peer_key: RSAPrivateKey, session_id: str, address: str) -> dict[str, str]:
    """The peer's half (made where its identity file is): its id, public key and signature of (session, wallet)."""
    address = str(AccountAddress.from_str_relaxed(address))
    public_key = peer_key.get_public_key()
    return {"peerId": peer_id_of(public_key), "peerPublicKey": public_key.to_bytes().decode(),
            "peerSignature": peer_key.sign(peer_statement(session_id, address)).decode()}


def sign_wallet_half(wallet_key: ed25519.PrivateKey, session_id: str, peer_id: str) -> dict[str, str]:
    """The wallet's half (made where its key file is): its address, public key and signature of (session, peer)."""
    public_key = wallet_key.public_key()
    return {"address": str(AccountAddress.from_key(public_key)), "walletPublicKey": str(public_key),
            "walletSignature": str(wallet_key.sign(wallet_statement(session_id, peer_id)))}


def sign_binding(peer_key: RSAPrivateKey, wallet_key: ed25519.PrivateKey, session_id: str) -> SignedBinding:
    """Both halves, for a volunteer who holds the peer's identity file and the wallet's key."""
    wallet = sign_wallet_half(wallet_key, session_id, peer_id_of(peer_key.get_public_key()))
    peer = sign_peer_half(peer_key, session_id, wallet["address"])
    return SignedBinding(session_id, peer["peerId"], wallet["address"], peer["peerPublicKey"], peer["peerSignature"],
                         wallet["walletPublicKey"], wallet["walletSignature"])


def check_binding(binding: SignedBinding) -> None:
    """Raises BadBindingSignature (one sentence, what to do) unless the peer's key — the one its peer id derives
    from — signed (session, wallet) and the wallet's key signed (session, peer id)."""
    check_peer_half(binding)
    check_wallet_half(binding)


def check_peer_half(b: SignedBinding) -> None:
    if not (b.peer_public_key and b.peer_signature):
        raise BadBindingSignature(f"The binding of peer {b.peer_id} has no signature by the peer's key; {RETRY}.")
    try:
        key = public_key_from_text(b.peer_public_key)
    except ValueError:
        raise BadBindingSignature(f"The peer's public key in the binding of peer {b.peer_id} is not an OpenSSH RSA "
                                  f"key; {RETRY}.") from None
    if peer_id_of(key) != b.peer_id:
        raise BadBindingSignature(f"The binding of peer {b.peer_id} is signed by another peer's key "
                                  f"({peer_id_of(key)}); sign it with the identity file of peer {b.peer_id}.")
    if not key.verify(peer_statement(b.session_id, b.address), b.peer_signature.encode()):
        raise BadBindingSignature(f"The peer's signature of the binding of peer {b.peer_id} to wallet {b.address} "
                                  f"does not verify; {RETRY}.")


def check_wallet_half(b: SignedBinding) -> None:
    if not (b.wallet_public_key and b.wallet_signature):
        raise BadBindingSignature(f"The binding of peer {b.peer_id} has no signature by wallet {b.address}; {RETRY}.")
    if b.wallet_full_message is not None:
        _check_wallet_message(b, b.wallet_public_key, b.wallet_signature, b.wallet_full_message)
        return
    try:
        key = ed25519.PublicKey.from_str(b.wallet_public_key)
        ok = key.verify(wallet_statement(b.session_id, b.peer_id), ed25519.Signature.from_str(b.wallet_signature))
        owns = AccountAddress.from_str_relaxed(b.address).address in derived_auth_keys(key)
    except Exception:  # a malformed key or signature is a bad signature
        ok = owns = False
    if not (ok and owns):
        raise BadBindingSignature(f"The binding of peer {b.peer_id} to wallet {b.address} is not signed by that "
                                  f"wallet's key; {RETRY} with that wallet's key file.")


def _check_wallet_message(b: SignedBinding, public_key: str, signature: str, full_message: str) -> None:
    """The browser wallet's form: its key signed a wallet-standard full message whose `message` is exactly the
    wallet's statement of this session and peer, and whose `address` is the bound wallet, which the key owns."""
    try:
        signed_for = check_signed_text(full_message, wallet_statement(b.session_id, b.peer_id).decode(), public_key,
                                       signature)
    except SignInError as exc:
        raise BadBindingSignature(f"The wallet's signature of the binding of peer {b.peer_id} does not verify: "
                                  f"{exc}") from None
    if signed_for != b.address:
        raise BadBindingSignature(f"The binding of peer {b.peer_id} to wallet {b.address} is not signed by that "
                                  "wallet's key; sign it with that wallet.")


def record_binding(db: Session, binding: SignedBinding) -> PeerBinding:
    """Check both signatures, then record the binding with them (so it can be checked again later)."""
    check_binding(binding)
    return bind_peer(db, binding.session_id, binding.peer_id, binding.address, BindingProof.PEER_AND_WALLET,
                     signed=binding)


def bind_peer(db: Session, session_id: str, peer_id: str, address: str, proof: BindingProof,
              signed: SignedBinding | None = None) -> PeerBinding:
    """Record a binding already proven (`record_binding` checks it). Binding the same peer to the same wallet
    again changes nothing."""
    addr = str(AccountAddress.from_str_relaxed(address))
    row = db.scalars(select(PeerBinding).where(PeerBinding.session_id == session_id,
                                               PeerBinding.peer_id == peer_id)).first()
    if row is not None:
        if row.address != addr:
            raise AlreadyBound(f"Peer {peer_id} is already bound to {row.address} in session {session_id}.")
        return row
    row = PeerBinding(session_id=session_id, peer_id=peer_id, address=addr, proof=proof, created_at=time.time())
    if signed is not None:
        row.peer_public_key, row.peer_signature = signed.peer_public_key, signed.peer_signature
        row.wallet_public_key, row.wallet_signature = signed.wallet_public_key, signed.wallet_signature
        row.wallet_full_message = signed.wallet_full_message
    db.add(row)
    db.flush()
    return row


def bound_wallets(db: Session, session_id: str) -> dict[str, str]:
    """Peer id → the wallet proven for it, in one session."""
    return {b.peer_id: b.address for b in db.scalars(select(PeerBinding).where(PeerBinding.session_id == session_id))}
