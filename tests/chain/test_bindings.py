"""Binding a peer to a wallet needs both signatures, checked by the server over real sockets (the `api`
fixture: uvicorn on 127.0.0.1): the peer's hivemind RSA identity key signs (session, wallet), the Aptos wallet
signs (session, peer id). Either half alone, a half by the wrong key, and a signed-in owner taking another's
peer are refused with one sentence that says what to do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hivemind.p2p import PeerID
from hivemind.utils.crypto import RSAPrivateKey

from cotrain.chain.bindings import SignedBinding, bound_wallets, sign_binding, sign_peer_half, sign_wallet_half
from cotrain.p2p.identity import load_or_create_identity
from cotrain.p2p.peer_keys import peer_id_of

from . import test_api
from .test_api import sign_in
from .wallets import Wallet

SESSION = "s-bind"
api = test_api.api  # the fixture: the wallet and rewards routes served by uvicorn on 127.0.0.1


@pytest.fixture
def peer_key(tmp_path: Path) -> RSAPrivateKey:
    """A peer's key as `cotrain join` makes it: hivemind's identity file, whose peer id the DHT takes."""
    path = tmp_path / "peer" / "p2p-identity.key"
    key = load_or_create_identity(path)
    assert peer_id_of(key.get_public_key()) == PeerID.from_identity(path.read_bytes()).to_base58()
    return key


def post(api, binding: SignedBinding, **headers: str):
    return api.client.post("/rewards/bindings", json=binding.body(), headers=headers)


def refused(answer, *phrases: str) -> str:
    assert answer.status_code == 401, answer.text
    detail = answer.json()["detail"]
    assert detail.count(". ") == 0 and detail.endswith("."), detail  # one sentence
    for phrase in phrases:
        assert phrase in detail, detail
    return detail


def bound(api) -> dict[str, str]:
    with api.chain.factory() as db:
        return bound_wallets(db, SESSION)


def test_both_signatures_bind_and_are_kept(api, peer_key):
    wallet = Wallet.create()
    binding = sign_binding(peer_key, wallet.account.private_key, SESSION)
    answer = post(api, binding)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"sessionId": SESSION, "peerId": binding.peer_id, "address": wallet.address,
                             "proof": "peer_and_wallet"}
    assert bound(api) == {binding.peer_id: wallet.address}
    assert post(api, binding).status_code == 201  # the same binding again changes nothing
    other = sign_binding(peer_key, Wallet.create().account.private_key, SESSION)
    assert post(api, other).status_code == 409  # a bound peer is not rebound to another wallet
    from cotrain.chain.orm import PeerBinding

    with api.chain.factory() as db:  # both halves are kept, so anyone can check the binding again
        row = db.query(PeerBinding).one()
        assert (row.peer_signature, row.wallet_signature) == (binding.peer_signature, binding.wallet_signature)


def test_wallet_half_alone_is_refused(api, peer_key):
    wallet = Wallet.create()
    peer_id = peer_id_of(peer_key.get_public_key())
    half = sign_wallet_half(wallet.account.private_key, SESSION, peer_id)
    binding = SignedBinding(SESSION, peer_id, half["address"], wallet_public_key=half["walletPublicKey"],
                            wallet_signature=half["walletSignature"])
    refused(post(api, binding), "no signature by the peer's key", "cotrain join --wallet-key-file")
    assert bound(api) == {}


def test_peer_half_alone_is_refused(api, peer_key):
    wallet = Wallet.create()
    half = sign_peer_half(peer_key, SESSION, wallet.address)
    binding = SignedBinding(SESSION, half["peerId"], wallet.address, half["peerPublicKey"], half["peerSignature"])
    refused(post(api, binding), f"no signature by wallet {wallet.address}")
    stranger = Wallet.create()  # the wallet's half signed by another wallet's key
    forged = sign_wallet_half(stranger.account.private_key, SESSION, half["peerId"])
    refused(post(api, replace(binding, wallet_public_key=forged["walletPublicKey"],
                              wallet_signature=forged["walletSignature"])), "not signed by that wallet's key")
    assert bound(api) == {}


def test_peer_half_by_another_key_than_the_peer_ids_is_refused(api, peer_key):
    wallet = Wallet.create()
    victim = sign_binding(peer_key, wallet.account.private_key, SESSION)
    impostor = sign_peer_half(RSAPrivateKey(), SESSION, wallet.address)  # a valid signature, by the wrong key
    refused(post(api, replace(victim, peer_public_key=impostor["peerPublicKey"],
                              peer_signature=impostor["peerSignature"])), "signed by another peer's key")
    # the right key, signing another wallet than the one named: the signature does not verify
    elsewhere = sign_peer_half(peer_key, SESSION, Wallet.create().address)
    refused(post(api, replace(victim, peer_signature=elsewhere["peerSignature"])), "does not verify")
    refused(post(api, replace(victim, peer_public_key="ssh-rsa not-a-key")), "not an OpenSSH RSA key")
    # a PEM header made cryptography raise UnsupportedAlgorithm, which was no ValueError: a 500, not a refusal
    refused(post(api, replace(victim, peer_public_key="-----BEGIN PUBLIC KEY-----")), "not an OpenSSH RSA key")
    # a binding signed for another session is no binding in this one
    other_session = sign_binding(peer_key, wallet.account.private_key, "another-session")
    refused(post(api, replace(other_session, session_id=SESSION)), "does not verify")
    assert bound(api) == {}


def test_signed_in_owner_cannot_take_anothers_peer(api, peer_key, monkeypatch):
    """The old exploit: the owner, signed in, bound a volunteer's peer to the owner's own wallet."""
    from cotrain.server import auth
    from cotrain.server.chain_bridge import wallet_token_resolver

    monkeypatch.setattr(auth, "_resolvers", [wallet_token_resolver(api.chain)])  # as the server's start does
    owner, volunteer = Wallet.create(), Wallet.create()
    ok, _ = sign_in(api.client, api.origin, owner)
    assert ok.status_code == 200, ok.text
    signed_in = {"Authorization": f"Bearer {ok.json()['token']}"}
    peer_id = peer_id_of(peer_key.get_public_key())
    refused(api.client.post("/rewards/bindings", headers=signed_in,
                            json={"sessionId": SESSION, "peerId": peer_id, "address": owner.address}),
            "no signature by the peer's key")
    owners_half = sign_wallet_half(owner.account.private_key, SESSION, peer_id)  # the owner's wallet agrees...
    own_key = RSAPrivateKey()  # ...and the owner signs the peer's half with a key of their own
    peers_half = sign_peer_half(own_key, SESSION, owner.address)
    taken = SignedBinding(SESSION, peer_id, owner.address, peers_half["peerPublicKey"], peers_half["peerSignature"],
                          owners_half["walletPublicKey"], owners_half["walletSignature"])
    refused(post(api, taken, **signed_in), "signed by another peer's key")
    assert bound(api) == {}
    # the volunteer, holding the peer's key, binds it to their own wallet
    assert post(api, sign_binding(peer_key, volunteer.account.private_key, SESSION)).status_code == 201
    assert bound(api) == {peer_id: volunteer.address}
