"""A browser wallet signs the wallet's half of a binding: AIP-62 signMessage wraps the wallet's statement in a
full message (APTOS, address:, application:, chainId:, message:, nonce:), and the server checks it by sign-in's
rules over real sockets (the `api` fixture: uvicorn on 127.0.0.1). The peer's half comes from
`cotrain rewards peer-signature`, run as a volunteer runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hivemind.utils.crypto import RSAPrivateKey
from typer.testing import CliRunner

from cotrain.chain.binding_token import BadPeerToken, read_peer_half_token
from cotrain.chain.bindings import BadBindingSignature, SignedBinding, bound_wallets, check_binding, wallet_statement
from cotrain.chain.orm import PeerBinding
from cotrain.cli import app as cli
from cotrain.p2p.identity import load_or_create_identity
from cotrain.p2p.peer_keys import peer_id_of

from . import test_api
from .wallets import Wallet

SESSION = "s-browser-bind"
api = test_api.api  # the fixture: the wallet and rewards routes served by uvicorn on 127.0.0.1


def identity(tmp_path: Path, name: str) -> tuple[Path, RSAPrivateKey]:
    path = tmp_path / name / "p2p-identity.key"
    return path, load_or_create_identity(path)


def peer_token(identity_file: Path, session_id: str, address: str) -> str:
    """What the volunteer pastes into the Rewards page, printed by the CLI on the peer's machine."""
    out = CliRunner().invoke(cli, ["rewards", "peer-signature", "--session", session_id, "--wallet", address,
                                   "--peer-key-file", str(identity_file)])
    assert out.exit_code == 0, out.output
    return out.stdout.strip()


def wallet_signed(api, wallet: Wallet, session_id: str, peer_id: str, message: str | None = None) -> dict[str, str]:
    """The browser's part: a nonce for (session, peer), signed by the wallet as Petra's signMessage signs."""
    nonce = api.client.post("/rewards/bindings/nonce", json={"sessionId": session_id, "peerId": peer_id,
                                                              "address": wallet.address})
    assert nonce.status_code == 200, nonce.text
    issued = nonce.json()
    assert issued["message"] == wallet_statement(session_id, peer_id).decode()
    signed = wallet.sign_message(message=issued["message"] if message is None else message, nonce=issued["nonce"],
                                 application=api.origin, chain_id=2)
    return {"walletPublicKey": wallet.public_key, "walletSignature": signed["signature"],
            "walletFullMessage": signed["fullMessage"]}


def post(api, half: SignedBinding, wallet_part: dict[str, str]):
    return api.client.post("/rewards/bindings", json={**half.body(), **wallet_part})


def refused(answer, reason: str) -> str:
    assert answer.status_code == 401, answer.text
    detail = answer.json()["detail"]
    assert detail["reason"] == reason, detail
    return str(detail["message"])


def test_browser_wallet_binds_a_peer_and_the_binding_checks_again(api, tmp_path):
    wallet = Wallet.create()
    identity_file, key = identity(tmp_path, "peer")
    half = read_peer_half_token(peer_token(identity_file, SESSION, wallet.address))
    assert (half.session_id, half.address, half.peer_id) == (SESSION, wallet.address, peer_id_of(key.get_public_key()))
    signed = wallet_signed(api, wallet, SESSION, half.peer_id)
    assert "\nmessage: CoTrain peer binding, the wallet's half\nsession: " in signed["walletFullMessage"]

    answer = post(api, half, signed)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"sessionId": SESSION, "peerId": half.peer_id, "address": wallet.address,
                             "proof": "peer_and_wallet"}
    with api.chain.factory() as db:
        assert bound_wallets(db, SESSION) == {half.peer_id: wallet.address}
        row = db.query(PeerBinding).one()
        kept = SignedBinding(row.session_id, row.peer_id, row.address, row.peer_public_key, row.peer_signature,
                             row.wallet_public_key, row.wallet_signature, row.wallet_full_message)
    assert kept.wallet_full_message == signed["walletFullMessage"]
    check_binding(kept)  # anyone can check the kept signatures again later
    assert refused(post(api, half, signed), "replay")  # the nonce is spent


def test_wrong_text_other_session_other_peer_and_tampered_signature_are_refused(api, tmp_path):
    wallet = Wallet.create()
    identity_file, _ = identity(tmp_path, "peer")
    half = read_peer_half_token(peer_token(identity_file, SESSION, wallet.address))
    other_file, other_key = identity(tmp_path, "other")
    other_peer = peer_id_of(other_key.get_public_key())

    # the wallet signed other text with the binding's nonce: the sign-in text, or the statement with more added
    sign_in_text = f"Sign in to CoTrain as {wallet.address}. This does not send a transaction or cost gas."
    assert "sign exactly" in refused(post(api, half, wallet_signed(api, wallet, SESSION, half.peer_id, sign_in_text)),
                                     "wrong_message")
    statement = wallet_statement(SESSION, half.peer_id).decode()
    assert "2 'nonce:' lines" in refused(
        post(api, half, wallet_signed(api, wallet, SESSION, half.peer_id, statement + "\nnonce: 00ff")), "bad_message")
    refused(post(api, half, wallet_signed(api, wallet, SESSION, half.peer_id, statement.replace("\n", " "))),
            "wrong_message")
    # the wallet signed the statement of another session (with that session's nonce), or of another peer
    refused(post(api, half, wallet_signed(api, wallet, "s-other", half.peer_id)), "wrong_message")
    refused(post(api, half, wallet_signed(api, wallet, SESSION, other_peer)), "wrong_message")
    # the signature tampered with
    signed = wallet_signed(api, wallet, SESSION, half.peer_id)
    flipped = signed["walletSignature"][:-2] + ("00" if not signed["walletSignature"].endswith("00") else "01")
    refused(post(api, half, signed | {"walletSignature": flipped}), "bad_signature")
    # the peer's half of another peer pasted for this one: refused before the wallet's nonce is spent
    stolen = SignedBinding(SESSION, other_peer, wallet.address, half.peer_public_key, half.peer_signature)
    answer = post(api, stolen, signed)
    assert answer.status_code == 401 and "signed by another peer's key" in answer.json()["detail"], answer.text
    assert post(api, half, signed).status_code == 201  # the same signature, unspent, still binds the right peer
    with api.chain.factory() as db:
        assert bound_wallets(db, SESSION) == {half.peer_id: wallet.address}
    assert other_file.exists()


def test_kept_full_message_must_name_the_statement_and_the_wallet(tmp_path):
    """The offline check (no nonce): a full message for another peer, or signed by another wallet's key."""
    wallet, thief = Wallet.create(), Wallet.create()
    _, key = identity(tmp_path, "peer")
    from cotrain.chain.bindings import sign_peer_half

    half = sign_peer_half(key, SESSION, wallet.address)
    statement = wallet_statement(SESSION, half["peerId"]).decode()
    good = wallet.sign_message(message=statement, nonce="ab12", application="http://127.0.0.1", chain_id=2)
    binding = SignedBinding(SESSION, half["peerId"], wallet.address, half["peerPublicKey"], half["peerSignature"],
                            wallet.public_key, good["signature"], good["fullMessage"])
    check_binding(binding)
    other = wallet.sign_message(message=wallet_statement(SESSION, "12D3Other").decode(), nonce="ab12",
                                application="http://127.0.0.1", chain_id=2)
    with pytest.raises(BadBindingSignature, match="asked the wallet to sign"):
        check_binding(SignedBinding(**{**binding.__dict__, "wallet_signature": other["signature"],
                                       "wallet_full_message": other["fullMessage"]}))
    forged = thief.sign_message(message=statement, nonce="ab12", application="http://127.0.0.1", chain_id=2,
                                address=wallet.address)
    with pytest.raises(BadBindingSignature, match="does not belong"):
        check_binding(SignedBinding(**{**binding.__dict__, "wallet_public_key": thief.public_key,
                                       "wallet_signature": forged["signature"],
                                       "wallet_full_message": forged["fullMessage"]}))
    with pytest.raises(BadPeerToken, match="paste the whole line"):
        read_peer_half_token("not-a-token")
