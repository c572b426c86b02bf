"""Sign-in verification with real Ed25519 signatures made by aptos-sdk keys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aptos_sdk.account_address import AccountAddress

from cotrain.chain.signin import (
    MemoryNonceStore,
    SignInError,
    SignInRequest,
    issue_challenge,
    verify_sign_in,
)

from .wallets import Wallet

ORIGIN = "https://cotrain.example"
CHAIN = 2


def run(coro):
    return asyncio.run(coro)


def signed_request(wallet: Wallet, store: MemoryNonceStore, **kw) -> SignInRequest:
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    out = wallet.sign_message(message=ch.message, nonce=ch.nonce, application=ORIGIN, chain_id=CHAIN, **kw)
    return SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"])


def refused(req, store, reason, **kw):
    with pytest.raises(SignInError) as err:
        run(verify_sign_in(req, store, ORIGIN, CHAIN, **kw))
    assert err.value.reason == reason, str(err.value)
    return err.value


def test_petra_style_message_signs_in():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ok = run(verify_sign_in(signed_request(wallet, store), store, ORIGIN, CHAIN))
    assert ok.address == wallet.address and ok.format == "aip62"


def test_any_line_order_is_accepted():
    wallet, store = Wallet.create(), MemoryNonceStore()
    req = signed_request(wallet, store, order=("nonce", "message", "application", "address", "chainId"))
    assert run(verify_sign_in(req, store, ORIGIN, CHAIN)).address == wallet.address


def test_replay_is_refused_with_reason():
    wallet, store = Wallet.create(), MemoryNonceStore()
    req = signed_request(wallet, store)
    run(verify_sign_in(req, store, ORIGIN, CHAIN))
    err = refused(req, store, "replay")
    assert "replay" in str(err) and err.status == 401


def test_expired_nonce_is_refused():
    wallet, store = Wallet.create(), MemoryNonceStore()
    req = signed_request(wallet, store)
    later = datetime.now(UTC) + timedelta(minutes=5, seconds=1)
    assert "expired" in str(refused(req, store, "expired_nonce", now=later))


def test_wrong_origin_is_refused():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    out = wallet.sign_message(message=ch.message, nonce=ch.nonce, application="https://evil.example", chain_id=CHAIN)
    req = SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"])
    assert "https://evil.example" in str(refused(req, store, "wrong_origin"))


def test_key_of_another_account_is_refused():
    wallet, other, store = Wallet.create(), Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    # `other` signs a message naming `wallet`'s address with its own (valid) key.
    out = other.sign_message(message=ch.message, nonce=ch.nonce, application=ORIGIN, chain_id=CHAIN,
                             address=wallet.address)
    req = SignInRequest(wallet.address, other.public_key, out["fullMessage"], out["signature"])
    refused(req, store, "wrong_key")


def test_tampered_message_or_signature_is_refused():
    wallet, store = Wallet.create(), MemoryNonceStore()
    req = signed_request(wallet, store)
    bad_msg = SignInRequest(req.address, req.public_key, req.full_message.replace("Sign in", "Sign on"), req.signature)
    refused(bad_msg, store, "bad_signature")
    sig = bytes.fromhex(req.signature[2:])
    flipped = SignInRequest(req.address, req.public_key, req.full_message, "0x" + (bytes([sig[0] ^ 1]) + sig[1:]).hex())
    refused(flipped, store, "bad_signature")
    # The failed attempts did not burn the nonce: the genuine signature still works once.
    run(verify_sign_in(req, store, ORIGIN, CHAIN))


def test_message_must_have_exactly_one_nonce_line():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    out = wallet.sign_message(message=ch.message + "\nnonce: deadbeefdeadbeef", nonce=ch.nonce,
                              application=ORIGIN, chain_id=CHAIN)
    req = SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"])
    assert "nonce" in str(refused(req, store, "bad_message"))


def test_unknown_nonce_and_other_address_nonce_are_refused():
    wallet, other, store = Wallet.create(), Wallet.create(), MemoryNonceStore()
    out = wallet.sign_message(message="hi", nonce="0123456789abcdef", application=ORIGIN, chain_id=CHAIN)
    refused(SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"]), store,
            "unknown_nonce")
    ch = issue_challenge(store, other.address, ORIGIN, CHAIN)
    out = wallet.sign_message(message=ch.message, nonce=ch.nonce, application=ORIGIN, chain_id=CHAIN)
    refused(SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"]), store,
            "wrong_address")


def test_wrong_chain_is_refused():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    out = wallet.sign_message(message=ch.message, nonce=ch.nonce, application=ORIGIN, chain_id=1)
    refused(SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"]), store,
            "wrong_chain")


def test_sign_in_with_aptos_aip116():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    out = wallet.sign_in_siwa(domain="cotrain.example", uri=ORIGIN, nonce=ch.nonce, chain="testnet")
    req = SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"])
    assert run(verify_sign_in(req, store, ORIGIN, CHAIN)).format == "aip116"
    refused(req, store, "replay")
    # Signed without the domain separator (a plain signMessage of the same text) is not accepted.
    ch2 = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    text = out["fullMessage"].replace(ch.nonce, ch2.nonce)
    plain = SignInRequest(wallet.address, wallet.public_key, text, str(wallet.account.sign(text.encode())))
    refused(plain, store, "bad_signature")


def test_rotated_key_uses_on_chain_auth_key():
    original, new_key, store = Wallet.create(), Wallet.create(), MemoryNonceStore()

    async def rotated(address: AccountAddress) -> bytes | None:
        # The account `original.address` now has `new_key`'s authentication key.
        return AccountAddress.from_str(new_key.address).address

    ch = issue_challenge(store, original.address, ORIGIN, CHAIN)
    out = new_key.sign_message(message=ch.message, nonce=ch.nonce, application=ORIGIN, chain_id=CHAIN,
                               address=original.address)
    req = SignInRequest(original.address, new_key.public_key, out["fullMessage"], out["signature"])
    refused(req, store, "wrong_key")  # without a node: the address's own key is expected
    assert run(verify_sign_in(req, store, ORIGIN, CHAIN, auth_key_lookup=rotated)).address == original.address
    # ...and the old key is refused once the node says the key rotated.
    req_old = signed_request(original, store)
    refused(req_old, store, "wrong_key", auth_key_lookup=rotated)


def test_bad_inputs_are_400_with_sentences():
    wallet, store = Wallet.create(), MemoryNonceStore()
    req = signed_request(wallet, store)
    for bad in (SignInRequest("zz", req.public_key, req.full_message, req.signature),
                SignInRequest(req.address, "0x1234", req.full_message, req.signature),
                SignInRequest(req.address, req.public_key, "hello", req.signature)):
        with pytest.raises(SignInError) as err:
            run(verify_sign_in(bad, store, ORIGIN, CHAIN))
        assert err.value.status == 400 and str(err.value).endswith(".")


def test_aip116_expiration_time_is_enforced():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    out = wallet.sign_in_siwa(domain="cotrain.example", uri=ORIGIN, nonce=ch.nonce, chain="aptos:2",
                              extra="\nIssued At: 2020-01-01T00:00:00Z\nExpiration Time: 2020-01-01T00:05:00Z")
    refused(SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"]), store,
            "expired_nonce")
    out = wallet.sign_in_siwa(domain="evil.example", uri="https://evil.example", nonce=ch.nonce, chain="aptos:2")
    refused(SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"]), store,
            "wrong_origin")
