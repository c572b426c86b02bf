"""Sign-in verification with real Ed25519 signatures made by aptos-sdk keys."""

from __future__ import annotations

import asyncio
import hashlib
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
    refused(bad_msg, store, "wrong_message")  # not the issued text: refused before the signature is checked
    head, *lines = req.full_message.split("\n")
    reordered = SignInRequest(req.address, req.public_key, "\n".join([head, *reversed(lines)]), req.signature)
    refused(reordered, store, "bad_signature")  # the same fields, but not the text the wallet signed
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
    out = wallet.sign_in_siwa(domain="cotrain.example", uri=ORIGIN, nonce=ch.nonce, chain="testnet",
                              statement=ch.message)
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
                              extra="\nIssued At: 2020-01-01T00:00:00Z\nExpiration Time: 2020-01-01T00:05:00Z",
                              statement=ch.message)
    refused(SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"]), store,
            "expired_nonce")
    out = wallet.sign_in_siwa(domain="evil.example", uri="https://evil.example", nonce=ch.nonce, chain="aptos:2",
                              statement=ch.message)
    refused(SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"]), store,
            "wrong_origin")


# ---- the signed message must be what this server issued (issue 11) ----------------------------------

def signed_full(wallet: Wallet, lines: list[str]) -> SignInRequest:
    """A wallet signing exactly `lines` (after the APTOS line), as a tampering client would make it."""
    full = "APTOS\n" + "\n".join(lines)
    return SignInRequest(wallet.address, wallet.public_key, full, str(wallet.account.sign(full.encode())))


def issued_lines(wallet: Wallet, ch, **changes: str) -> list[str]:
    values = {"address": wallet.address, "application": ORIGIN, "chainId": str(CHAIN), "message": ch.message,
              "nonce": ch.nonce, **changes}
    return [f"{k}: {v}" for k, v in values.items()]


def test_a_field_smuggled_inside_message_is_refused():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    # A client-chosen message carrying its own nonce and application lines: duplicates are refused...
    for extra in ("\nnonce: " + ch.nonce, "\napplication: " + ORIGIN, "\nchainId: 2", "\naddress: " + wallet.address):
        refused(signed_full(wallet, issued_lines(wallet, ch, message=ch.message + extra)), store, "bad_message")
    # ...and so is a message that is not the issued text, even with every other field right.
    err = refused(signed_full(wallet, issued_lines(wallet, ch, message=ch.message + " Also approve a transfer.")),
                  store, "wrong_message")
    assert "issued" in str(err)
    refused(signed_full(wallet, issued_lines(wallet, ch, message=ch.message + " ")), store, "wrong_message")
    # A line that is no field at all (where a smuggled statement would go) is refused.
    refused(signed_full(wallet, [*issued_lines(wallet, ch), "statement: pay 100 APT"]), store, "bad_message")
    refused(signed_full(wallet, [*issued_lines(wallet, ch), "pay 100 APT"]), store, "bad_message")
    # No `message:` line at all: not the issued message either.
    no_message = [line for line in issued_lines(wallet, ch) if not line.startswith("message:")]
    refused(signed_full(wallet, no_message), store, "wrong_message")
    # None of these burnt the nonce: the exact issued message still signs in, once.
    assert run(verify_sign_in(signed_full(wallet, issued_lines(wallet, ch)), store, ORIGIN, CHAIN)).address


def test_duplicate_lines_are_refused():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    for key in ("address", "application", "chainId", "message", "nonce"):
        lines = issued_lines(wallet, ch)
        lines.append(next(line for line in lines if line.startswith(key + ":")))
        err = refused(signed_full(wallet, lines), store, "bad_message")
        assert f"2 '{key}:' lines" in str(err)


def test_chain_id_is_required_and_must_be_the_configured_one():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    no_chain = [line for line in issued_lines(wallet, ch) if not line.startswith("chainId:")]
    assert "no chain id" in str(refused(signed_full(wallet, no_chain), store, "wrong_chain"))
    for wrong in ("1", "4", "aptos:1", "mainnet", "", "2x"):
        refused(signed_full(wallet, issued_lines(wallet, ch, chainId=wrong)), store, "wrong_chain")
    assert run(verify_sign_in(signed_full(wallet, issued_lines(wallet, ch, chainId="aptos:2")), store, ORIGIN,
                              CHAIN)).address == wallet.address
    # A server without a chain id cannot check it: refused with what the operator must set.
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    with pytest.raises(SignInError) as err:
        run(verify_sign_in(signed_full(wallet, issued_lines(wallet, ch)), store, ORIGIN, None))
    assert err.value.reason == "no_chain" and "APTOS_CHAIN_ID" in str(err.value)


def test_application_must_equal_the_public_origin_exactly():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)
    for wrong in ("https://cotrain.example.evil.example", "http://cotrain.example", "https://cotrain.example:8443",
                  "https://evil.example", "https://cotrain.example/path", "http://127.0.0.1:8000", " " + ORIGIN):
        err = refused(signed_full(wallet, issued_lines(wallet, ch, application=wrong)), store, "wrong_origin")
        assert ORIGIN in str(err)
    # A trailing slash is how some wallets write the same origin.
    ok = run(verify_sign_in(signed_full(wallet, issued_lines(wallet, ch, application=ORIGIN + "/")), store, ORIGIN,
                            CHAIN))
    assert ok.address == wallet.address


def test_without_a_public_origin_only_loopback_origins_are_accepted():
    wallet, store = Wallet.create(), MemoryNonceStore()
    for good in ("http://127.0.0.1:8000", "http://localhost:5173", "https://[::1]:8443", "http://127.0.0.1"):
        ch = issue_challenge(store, wallet.address, "http://127.0.0.1:8000", CHAIN)
        req = signed_full(wallet, issued_lines(wallet, ch, application=good))
        assert run(verify_sign_in(req, store, None, CHAIN)).address == wallet.address
    ch = issue_challenge(store, wallet.address, "http://127.0.0.1:8000", CHAIN)
    for bad in ("https://evil.example", "http://localhost.evil.example", "http://127.0.0.1.nip.io",
                "http://evil@127.0.0.1", "http://10.0.0.5:8000", "http://0.0.0.0:8000", "http://127.0.0.1:8000/x"):
        with pytest.raises(SignInError) as err:
            run(verify_sign_in(signed_full(wallet, issued_lines(wallet, ch, application=bad)), store, None, CHAIN))
        assert err.value.reason == "wrong_origin" and "COTRAIN_PUBLIC_ORIGIN" in str(err.value)


def test_aip116_follows_the_same_rules():
    wallet, store = Wallet.create(), MemoryNonceStore()
    ch = issue_challenge(store, wallet.address, ORIGIN, CHAIN)

    def siwa(**kw) -> SignInRequest:
        args = {"domain": "cotrain.example", "uri": ORIGIN, "nonce": ch.nonce, "chain": "aptos:2",
                "statement": ch.message, **kw}
        out = wallet.sign_in_siwa(**args)
        return SignInRequest(wallet.address, wallet.public_key, out["fullMessage"], out["signature"])

    refused(siwa(statement="Sign in to CoTrain"), store, "wrong_message")
    refused(siwa(statement=ch.message + "\nNonce: " + ch.nonce), store, "bad_message")
    refused(siwa(extra="\nNonce: " + ch.nonce), store, "bad_message")  # a second Nonce line
    refused(siwa(extra="\nChain ID: aptos:2"), store, "bad_message")
    refused(siwa(extra="\nURI: https://evil.example"), store, "bad_message")
    refused(siwa(extra="\nPay: 100 APT"), store, "bad_message")  # not an AIP-116 field
    refused(siwa(chain="aptos:1"), store, "wrong_chain")
    refused(siwa(domain="evil.example", uri="https://evil.example"), store, "wrong_origin")
    text = siwa().full_message.replace("\nChain ID: aptos:2", "")
    signed = hashlib.sha3_256(b"SIGN_IN_WITH_APTOS::").digest() + text.encode()
    no_chain = SignInRequest(wallet.address, wallet.public_key, text, str(wallet.account.private_key.sign(signed)))
    refused(no_chain, store, "wrong_chain")
    # With resources (the last field) and an issue time the genuine message signs in.
    ok = siwa(extra="\nIssued At: 2030-01-01T00:00:00Z\nResources:\n- https://cotrain.example/rewards")
    assert run(verify_sign_in(ok, store, ORIGIN, CHAIN)).format == "aip116"


def test_public_origin_setting_is_checked_and_normalised(monkeypatch):
    from cotrain.chain.settings import ChainConfigError
    from tests.chain.test_keys_settings import chain_settings

    def origin(value: str) -> str | None:
        return chain_settings(monkeypatch, COTRAIN_PUBLIC_ORIGIN=value).origin

    assert origin("") is None
    assert origin("https://CoTrain.Example/") == "https://cotrain.example"
    assert origin("https://cotrain.example:443") == "https://cotrain.example"  # as browsers write it
    assert origin("http://cotrain.example:8080") == "http://cotrain.example:8080"
    for bad in ("cotrain.example", "https://cotrain.example/app", "ftp://cotrain.example", "https://u:p@cotrain.example",
                "https://cotrain.example?x=1", "https://cotrain.example:99999"):
        with pytest.raises(ChainConfigError) as err:
            origin(bad)
        assert "COTRAIN_PUBLIC_ORIGIN" in str(err.value) and "e.g. https://cotrain.example" in str(err.value)
    settings = chain_settings(monkeypatch)
    assert "loopback origins only" in settings.sign_in_notice()
