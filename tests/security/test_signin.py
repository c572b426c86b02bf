"""Wallet sign-in and wallet tokens against a real `cotrain up` (issue 11, "Sign-in and tokens").

A tampering client signs with a real Aptos key whatever it likes: a `message:` carrying its own
fields, another application (a phishing site, or a forged Host header), no chain id. Each is refused
with the reason. Signed-in tokens end when signed out, expired or revoked, on the server's routes
(`/auth/me`) and the chain's (`/me/rewards`) alike.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aptos_sdk import ed25519

from cotrain.chain.tokens import issue_token
from tests.chain.wallets import Wallet
from tests.security.conftest import ADMIN_TOKEN, ServerProcess, api_token, wallet_sign_in

LEDGER_KEY = "0x" + "5e" * 32  # the server's platform key, so a test can mint a token that already expired
PUBLIC_ORIGIN = "https://cotrain.example"


def _start(home_name: str, tmp_path_factory: pytest.TempPathFactory, **env_overrides: str) -> ServerProcess:
    home = tmp_path_factory.mktemp(home_name)
    env = dict(os.environ)
    env.update(COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0",
               COTRAIN_EMBEDDED_WORKER="0", COTRAIN_LEDGER_KEY=LEDGER_KEY, COTRAIN_RATE_SIGN_IN="1000/minute",
               APTOS_NETWORK="testnet", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    for key in ("DATABASE_URL", "REDIS_URL", "COTRAIN_PUBLIC_ORIGIN", "APTOS_CHAIN_ID"):
        env.pop(key, None)
    env.update(env_overrides)
    return ServerProcess(home, env).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No COTRAIN_PUBLIC_ORIGIN: wallets may sign in for loopback origins only."""
    process = _start("signin-home", tmp_path_factory)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def public_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start("signin-public-home", tmp_path_factory, COTRAIN_PUBLIC_ORIGIN=PUBLIC_ORIGIN)
    yield process
    process.stop()


def client(server: ServerProcess, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api/v1", timeout=30, **kw)


def nonce(server: ServerProcess, wallet: Wallet, **kw: Any) -> dict[str, Any]:
    with client(server) as c:
        got = c.post("/auth/nonce", json={"address": wallet.address}, **kw)
    assert got.status_code == 200, got.text
    return got.json()


def verify_lines(server: ServerProcess, wallet: Wallet, lines: list[str], **kw: Any) -> httpx.Response:
    """Sign exactly `lines` (after the APTOS line) with the wallet's real key and send it."""
    full = "APTOS\n" + "\n".join(lines)
    body = {"address": wallet.address, "publicKey": wallet.public_key, "fullMessage": full,
            "signature": str(wallet.account.sign(full.encode()))}
    with client(server) as c:
        return c.post("/auth/verify", json=body, **kw)


def lines_for(wallet: Wallet, issued: dict[str, Any], **changes: str | None) -> list[str]:
    values: dict[str, str | None] = {"address": wallet.address, "application": issued["application"],
                                     "chainId": str(issued["chainId"]), "message": issued["message"],
                                     "nonce": issued["nonce"], **changes}
    return [f"{k}: {v}" for k, v in values.items() if v is not None]


def refusal(response: httpx.Response, status: int = 401) -> tuple[str, str]:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    return detail["reason"], detail["message"]


def me_and_rewards(server: ServerProcess, token: str) -> tuple[int, int]:
    """The status of a server route and of a chain route called with `token`."""
    with client(server, headers={"Authorization": f"Bearer {token}"}) as c:
        return c.get("/auth/me").status_code, c.get("/me/rewards").status_code


# ---- what was signed must be what was issued ----------------------------------------------------

def test_the_server_says_at_start_which_origins_it_accepts(server, public_server):
    assert "loopback origins only" in server.log_path.read_text()
    assert f"accepts messages signed for {PUBLIC_ORIGIN} only" in public_server.log_path.read_text()


def test_a_line_smuggled_inside_message_is_refused(server):
    wallet = Wallet.create()
    issued, other = nonce(server, wallet), nonce(server, wallet)
    smuggled = {
        "a second nonce": issued["message"] + "\nnonce: " + other["nonce"],
        "another application": issued["message"] + "\napplication: https://evil.example",
        "another chain": issued["message"] + "\nchainId: 1",
    }
    for what, message in smuggled.items():
        reason, sentence = refusal(verify_lines(server, wallet, lines_for(wallet, issued, message=message)))
        assert reason == "bad_message" and "must have one" in sentence, what
    # The attacker's own text instead of the issued one, or an extra line that is no field, is refused too.
    reason, _ = refusal(verify_lines(server, wallet, lines_for(wallet, issued, message="Send 100 APT to 0xbad")))
    assert reason == "wrong_message"
    reason, _ = refusal(verify_lines(server, wallet, [*lines_for(wallet, issued), "statement: Send 100 APT"]))
    assert reason == "bad_message"
    # None of it used up the nonce: the honest message signs in, once.
    ok = verify_lines(server, wallet, lines_for(wallet, issued))
    assert ok.status_code == 200, ok.text
    assert refusal(verify_lines(server, wallet, lines_for(wallet, issued)))[0] == "replay"


def test_a_forged_host_header_changes_nothing(server):
    wallet = Wallet.create()
    issued = nonce(server, wallet, headers={"Host": "evil.example"})
    assert issued["application"] == server.url  # this server on the loopback address, not the Host header
    for application in ("http://evil.example", "https://evil.example"):
        reason, sentence = refusal(verify_lines(server, wallet, lines_for(wallet, issued, application=application),
                                                headers={"Host": "evil.example"}))
        assert reason == "wrong_origin" and "COTRAIN_PUBLIC_ORIGIN" in sentence
    ok = verify_lines(server, wallet, lines_for(wallet, issued), headers={"Host": "evil.example"})
    assert ok.status_code == 200, ok.text


def test_chain_id_missing_or_wrong_is_refused(server):
    wallet = Wallet.create()
    issued = nonce(server, wallet)
    assert issued["chainId"] == 2
    reason, sentence = refusal(verify_lines(server, wallet, lines_for(wallet, issued, chainId=None)))
    assert reason == "wrong_chain" and "no chain id" in sentence
    for wrong in ("1", "aptos:1", "mainnet", "4"):
        assert refusal(verify_lines(server, wallet, lines_for(wallet, issued, chainId=wrong)))[0] == "wrong_chain"
    assert verify_lines(server, wallet, lines_for(wallet, issued, chainId="testnet")).status_code == 200


def test_with_a_public_origin_application_must_be_exactly_it(public_server):
    server, wallet = public_server, Wallet.create()
    issued = nonce(server, wallet, headers={"Host": "evil.example"})
    assert issued["application"] == PUBLIC_ORIGIN
    for wrong in (server.url, "http://localhost:8000", "http://cotrain.example", "https://cotrain.example:8443",
                  "https://cotrain.example.evil.example", "https://evil.example"):
        reason, sentence = refusal(verify_lines(server, wallet, lines_for(wallet, issued, application=wrong)))
        assert reason == "wrong_origin" and PUBLIC_ORIGIN in sentence, wrong
    ok = verify_lines(server, wallet, lines_for(wallet, issued))
    assert ok.status_code == 200, ok.text
    assert "secure" in ok.headers["set-cookie"].lower()  # an https origin: the cookie travels over TLS only


def test_aip116_sign_in_follows_the_same_rules(server):
    wallet = Wallet.create()
    issued = nonce(server, wallet)

    def send(**kw: str) -> httpx.Response:
        args = {"domain": server.url.removeprefix("http://"), "uri": server.url, "nonce": issued["nonce"],
                "chain": "aptos:2", "statement": issued["message"], **kw}
        body = {"address": wallet.address, "publicKey": wallet.public_key, **wallet.sign_in_siwa(**args)}
        with client(server) as c:
            return c.post("/auth/verify", json=body)

    assert refusal(send(statement="Sign in to CoTrain"))[0] == "wrong_message"
    assert refusal(send(extra="\nNonce: " + issued["nonce"]))[0] == "bad_message"
    assert refusal(send(domain="evil.example", uri="https://evil.example"))[0] == "wrong_origin"
    assert refusal(send(chain="aptos:1"))[0] == "wrong_chain"
    assert send().status_code == 200


# ---- tokens end: signed out, expired, revoked ---------------------------------------------------

def test_logout_revokes_the_token_on_server_and_chain_routes(server):
    token, wallet = wallet_sign_in(server)
    second, _ = wallet_sign_in(server, wallet)  # the same wallet in another browser
    assert me_and_rewards(server, token) == (200, 200)
    with client(server, headers={"Authorization": f"Bearer {token}"}) as c:
        out = c.post("/auth/logout")
    assert out.status_code == 204 and 'cotrain_wallet=""' in out.headers["set-cookie"]
    assert me_and_rewards(server, token) == (401, 401)
    with client(server, headers={"Authorization": f"Bearer {token}"}) as c:
        assert "signed out" in c.get("/me/rewards").json()["detail"]
        assert c.post("/auth/logout").status_code == 401
    assert me_and_rewards(server, second) == (200, 200)  # only the token in hand was signed out


def test_logout_with_the_cookie_as_a_browser_sends_it(server):
    wallet = Wallet.create()
    with client(server) as browser:
        issued = browser.post("/auth/nonce", json={"address": wallet.address}).json()
        signed = wallet.sign_message(message=issued["message"], nonce=issued["nonce"],
                                     application=issued["application"], chain_id=issued["chainId"])
        verified = browser.post("/auth/verify", json={"address": wallet.address, "publicKey": wallet.public_key,
                                                      **signed})
        token = verified.json()["token"]
        assert browser.cookies.get("cotrain_wallet") == token
        assert browser.get("/me/rewards").status_code == 200  # the cookie alone signs in
        assert browser.post("/auth/logout").status_code == 204
        assert "cotrain_wallet" not in browser.cookies
    assert me_and_rewards(server, token) == (401, 401)
    with client(server, cookies={"cotrain_wallet": token}) as stale:
        assert stale.get("/me/rewards").status_code == 401


def test_logout_needs_a_wallet_sign_in(server):
    with client(server) as anonymous:
        assert anonymous.post("/auth/logout").status_code == 401
    member = api_token(server, "member", "logout-tester")
    with client(server, headers={"Authorization": f"Bearer {member}"}) as c:
        refused = c.post("/auth/logout")
        assert refused.status_code == 403 and "API token" in refused.json()["detail"]
        assert c.get("/auth/me").status_code == 200  # an API token is not signed out by this route


def test_an_expired_or_foreign_token_is_refused(server):
    wallet = Wallet.create()
    key = ed25519.PrivateKey.from_hex(LEDGER_KEY)
    expired, _ = issue_token(key, wallet.address, ttl_s=60, now=time.time() - 3600)
    assert me_and_rewards(server, expired) == (401, 401)
    fresh, _ = issue_token(key, wallet.address, ttl_s=60)
    assert me_and_rewards(server, fresh) == (200, 200)  # the same key, not expired: accepted
    foreign, _ = issue_token(ed25519.PrivateKey.random(), wallet.address, ttl_s=3600)
    assert me_and_rewards(server, foreign) == (401, 401)


def test_revoking_all_of_a_wallets_tokens_holds_on_every_route(server):
    """What an admin's "revoke this user's tokens" sets (`tokens_valid_after`), and a revoked principal."""
    token, wallet = wallet_sign_in(server)
    assert me_and_rewards(server, token) == (200, 200)
    db = sqlite3.connect(server.home / "cotrain.db")
    try:
        with db:
            db.execute("UPDATE api_tokens SET tokens_valid_after = ? WHERE name = ?",
                       (time.time() + 0.001, f"wallet:{wallet.address}"))
        time.sleep(0.01)
        assert me_and_rewards(server, token) == (401, 401)
        later, _ = wallet_sign_in(server, wallet)  # a sign-in after the cut-off works
        assert me_and_rewards(server, later) == (200, 200)
        with db:
            db.execute("UPDATE api_tokens SET revoked = 1 WHERE name = ?", (f"wallet:{wallet.address}",))
        assert me_and_rewards(server, later) == (401, 401)
    finally:
        db.close()


def test_revoked_ids_are_kept_only_until_their_tokens_expire(server):
    db = sqlite3.connect(server.home / "cotrain.db")
    try:
        with db:
            db.execute("INSERT INTO revoked_tokens (token_id, expires_at, revoked_at) VALUES ('old', ?, ?)",
                       (time.time() - 60, time.time() - 3600))
        token, _ = wallet_sign_in(server)
        with client(server, headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.post("/auth/logout").status_code == 204
        ids = [row[0] for row in db.execute("SELECT token_id FROM revoked_tokens")]
        assert "old" not in ids and len(ids) >= 1  # the expired one dropped, this sign-out kept
    finally:
        db.close()
