"""Users and roles against a real `cotrain up`: who may list users and change roles (admins only),
what a role change does to the user's very next request, the last admin, revoking a wallet's
tokens and banning it, API tokens by `token:ID`, and `cotrain users` on the server's database.

One server for the module (no training here); every test signs in wallets of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chain.wallets import Wallet
from tests.security.conftest import ADMIN_TOKEN, ServerProcess, api_token, wallet_sign_in


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("users-home")
    env = dict(os.environ)
    env.update(COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    process = ServerProcess(home, env).start()
    yield process
    process.stop()


def me(server: ServerProcess, token: str) -> httpx.Response:
    with server.client(token) as client:
        return client.get("/auth/me")


def try_sign_in(server: ServerProcess, wallet: Wallet) -> httpx.Response:
    """A wallet sign-in whose answer the test inspects (refusals included)."""
    with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
        challenge = client.post("/auth/nonce", json={"address": wallet.address}).json()
        signed = wallet.sign_message(message=challenge["message"], nonce=challenge["nonce"],
                                     application=challenge["application"], chain_id=challenge["chainId"])
        return client.post("/auth/verify", json={"address": wallet.address, "publicKey": wallet.public_key, **signed})


def admin_token_id(server: ServerProcess) -> int:
    answer = me(server, ADMIN_TOKEN)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def test_anonymous_callers_get_401(server: ServerProcess) -> None:
    wallet = Wallet.create()
    with server.client(None) as anonymous:
        answers = [anonymous.get("/users"), anonymous.get(f"/users/{wallet.address}"),
                   anonymous.put(f"/users/{wallet.address}/role", json={"role": "admin"}),
                   anonymous.post(f"/users/{wallet.address}/revoke")]
    assert [a.status_code for a in answers] == [401] * 4, [a.text for a in answers]
    assert "sign" in answers[0].json()["detail"].lower()


def test_members_and_maintainers_cannot_list_users_or_change_roles(server: ServerProcess) -> None:
    token, wallet = wallet_sign_in(server)
    other = Wallet.create()
    maintainer = api_token(server, "maintainer", name="a maintainer")
    for caller in (token, api_token(server, "member"), maintainer):
        with server.client(caller) as client:
            answers = {
                "list": client.get("/users"),
                "one": client.get(f"/users/{wallet.address}"),
                "self-admin": client.put(f"/users/{wallet.address}/role", json={"role": "admin"}),
                "self-maintainer": client.put(f"/users/{wallet.address}/role", json={"role": "maintainer"}),
                "other": client.put(f"/users/{other.address}/role", json={"role": "admin"}),
                "admin token": client.put(f"/users/token:{admin_token_id(server)}/role", json={"role": "member"}),
                "revoke": client.post(f"/users/{other.address}/revoke", json={"ban": True}),
            }
        refused = {name: a.status_code for name, a in answers.items()}
        assert refused == dict.fromkeys(answers, 403), {n: a.text for n, a in answers.items()}
        assert "only admins can" in answers["self-admin"].json()["detail"]
    assert me(server, token).json()["role"] == "member"  # still a member after trying
    with server.client() as admin:
        listed = admin.get("/users", params={"kind": "wallet", "limit": 500}).json()["items"]
    assert other.address not in {u["address"] for u in listed}  # the refused PUT created nothing
    assert me(server, ADMIN_TOKEN).json()["role"] == "admin"


def test_admin_promotes_a_wallet_and_its_next_request_is_a_maintainers(server: ServerProcess) -> None:
    token, wallet = wallet_sign_in(server)
    assert me(server, token).json()["role"] == "member"
    with server.client() as admin:
        changed = admin.put(f"/users/{wallet.address}/role", json={"role": "maintainer"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["role"] == "maintainer" and changed.json()["previousRole"] == "member"
        listed = admin.get("/users", params={"role": "maintainer", "kind": "wallet"}).json()
    assert me(server, token).json()["role"] == "maintainer"  # the same token, no new sign-in
    row = next(u for u in listed["items"] if u["address"] == wallet.address)
    assert row["ref"] == wallet.address and row["kind"] == "wallet" and row["name"] == wallet.address
    assert row["lastLoginAt"] is not None and row["createdAt"] is not None and row["revoked"] is False
    assert {u["role"] for u in listed["items"]} == {"maintainer"}
    with server.client(token) as maintainer:  # a maintainer still may not manage users
        assert maintainer.get("/users").status_code == 403
    with server.client() as admin:
        assert admin.put(f"/users/{wallet.address}/role", json={"role": "member"}).status_code == 200
    assert me(server, token).json()["role"] == "member"


def test_a_role_can_be_given_before_the_wallet_ever_signs_in(server: ServerProcess) -> None:
    wallet = Wallet.create()
    short = "0x" + wallet.address[2:].upper()  # any spelling of the address names the same wallet
    with server.client() as admin:
        given = admin.put(f"/users/{short}/role", json={"role": "maintainer"})
    assert given.status_code == 200, given.text
    assert given.json()["address"] == wallet.address and given.json()["lastLoginAt"] is None
    token, _ = wallet_sign_in(server, wallet)
    assert me(server, token).json()["role"] == "maintainer"


def test_bad_addresses_roles_and_bodies_get_clear_refusals(server: ServerProcess) -> None:
    wallet = Wallet.create()
    with server.client() as admin:
        bad_address = admin.put("/users/not-an-address/role", json={"role": "member"})
        bad_token = admin.put("/users/token:abc/role", json={"role": "member"})
        no_token = admin.put("/users/token:999999/role", json={"role": "member"})
        bad_role = admin.put(f"/users/{wallet.address}/role", json={"role": "owner"})
        anonymous_role = admin.put(f"/users/{wallet.address}/role", json={"role": "anonymous"})
        extra = admin.put(f"/users/{wallet.address}/role", json={"role": "member", "admin": True})
        bad_ban = admin.post(f"/users/{wallet.address}/revoke", json={"ban": "yes"})
        never = admin.post(f"/users/{wallet.address}/revoke")
        bad_filter = admin.get("/users", params={"role": "owner"})
    assert bad_address.status_code == 400 and "not-an-address" in bad_address.json()["detail"]
    assert "wallet address" in bad_address.json()["detail"]
    assert bad_token.status_code == 400 and "token:ID" in bad_token.json()["detail"]
    assert no_token.status_code == 404 and "No API token 999999" in no_token.json()["detail"]
    assert [bad_role.status_code, anonymous_role.status_code, extra.status_code, bad_ban.status_code,
            bad_filter.status_code] == [422] * 5
    assert never.status_code == 404 and "never signed in" in never.json()["detail"]
    with server.client() as admin:  # none of these created the wallet's row
        assert admin.get(f"/users/{wallet.address}").status_code == 404


def test_the_last_admin_cannot_be_demoted_or_revoked(server: ServerProcess) -> None:
    admin_id = admin_token_id(server)
    with server.client() as admin:
        demote = admin.put(f"/users/token:{admin_id}/role", json={"role": "maintainer"})
        revoke = admin.post(f"/users/token:{admin_id}/revoke")
    assert demote.status_code == 409 and "last admin" in demote.json()["detail"], demote.text
    assert revoke.status_code == 409 and "last admin" in revoke.json()["detail"], revoke.text
    assert me(server, ADMIN_TOKEN).json()["role"] == "admin"

    # with a second admin (a wallet), the wallet can be demoted again; then the token is the last one
    token, wallet = wallet_sign_in(server)
    with server.client() as admin:
        assert admin.put(f"/users/{wallet.address}/role", json={"role": "admin"}).status_code == 200
    with server.client(token) as wallet_admin:  # the promoted wallet administers users now
        assert wallet_admin.get("/users", params={"role": "admin"}).json()["total"] == 2
        assert wallet_admin.put(f"/users/{wallet.address}/role", json={"role": "member"}).status_code == 200
    with server.client() as admin:
        assert admin.put(f"/users/token:{admin_id}/role", json={"role": "member"}).status_code == 409
    assert me(server, token).json()["role"] == "member"


def test_revoke_ends_a_wallets_tokens_and_a_new_sign_in_works(server: ServerProcess) -> None:
    first, wallet = wallet_sign_in(server)
    second, _ = wallet_sign_in(server, wallet)
    assert me(server, first).status_code == 200 and me(server, second).status_code == 200
    with server.client() as admin:
        revoked = admin.post(f"/users/{wallet.address}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["tokensValidAfter"] is not None and revoked.json()["revoked"] is False
    assert me(server, first).status_code == 401 and me(server, second).status_code == 401
    with server.client(first) as client:  # every endpoint, the chain's too
        assert client.get("/sessions", params={"limit": 1}).status_code == 401
    fresh, _ = wallet_sign_in(server, wallet)
    assert me(server, fresh).json()["role"] == "member"


def test_a_banned_wallet_cannot_sign_in_until_the_ban_is_lifted(server: ServerProcess) -> None:
    token, wallet = wallet_sign_in(server)
    with server.client() as admin:
        banned = admin.post(f"/users/{wallet.address}/revoke", json={"ban": True})
    assert banned.status_code == 200 and banned.json()["revoked"] is True, banned.text
    assert me(server, token).status_code == 401
    refused = try_sign_in(server, wallet)
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"]["reason"] == "banned" and "ask an admin" in refused.json()["detail"]["message"]
    with server.client() as admin:  # a role change does not lift a ban
        assert admin.put(f"/users/{wallet.address}/role", json={"role": "maintainer"}).status_code == 200
    assert try_sign_in(server, wallet).status_code == 403
    with server.client() as admin:
        lifted = admin.post(f"/users/{wallet.address}/revoke", json={"ban": False})
    assert lifted.status_code == 200 and lifted.json()["revoked"] is False
    again = try_sign_in(server, wallet)
    assert again.status_code == 200, again.text
    assert me(server, again.json()["token"]).json()["role"] == "maintainer"


def test_a_wallet_can_be_banned_before_it_ever_signs_in(server: ServerProcess) -> None:
    wallet = Wallet.create()
    with server.client() as admin:
        assert admin.post(f"/users/{wallet.address}/revoke", json={"ban": True}).status_code == 200
    assert try_sign_in(server, wallet).status_code == 403


def test_api_tokens_by_id_role_and_revoke(server: ServerProcess) -> None:
    token = api_token(server, "member", name="ci bot")
    token_id = me(server, token).json()["id"]
    with server.client() as admin:
        promoted = admin.put(f"/users/token:{token_id}/role", json={"role": "maintainer"})
        assert promoted.status_code == 200 and promoted.json()["kind"] == "token", promoted.text
        assert promoted.json()["name"] == "ci bot" and promoted.json()["address"] is None
        assert me(server, token).json()["role"] == "maintainer"
        tokens = admin.get("/users", params={"kind": "token", "limit": 500}).json()["items"]
        assert f"token:{token_id}" in {u["ref"] for u in tokens} and {u["kind"] for u in tokens} == {"token"}
        assert admin.post(f"/users/token:{token_id}/revoke").status_code == 200
        assert me(server, token).status_code == 401
        assert admin.post(f"/users/token:{token_id}/revoke", json={"ban": False}).status_code == 409
        assert admin.get(f"/users/token:{token_id}").json()["revoked"] is True


def test_list_is_paginated(server: ServerProcess) -> None:
    for _ in range(3):
        wallet_sign_in(server)
    with server.client() as admin:
        everyone = admin.get("/users", params={"limit": 500}).json()
        first = admin.get("/users", params={"limit": 2}).json()
        second = admin.get("/users", params={"limit": 2, "offset": 2}).json()
        assert admin.get("/users", params={"limit": 0}).status_code == 422
    assert everyone["total"] == len(everyone["items"]) >= 4
    assert first["total"] == everyone["total"] and len(first["items"]) == 2
    assert [u["ref"] for u in first["items"] + second["items"]] == [u["ref"] for u in everyone["items"][:4]]


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "COTRAIN_HOME": str(server.home)}
    cotrain = str(Path(sys.executable).with_name("cotrain"))
    return subprocess.run([cotrain, "users", *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_lists_sets_roles_and_revokes_on_the_servers_database(server: ServerProcess) -> None:
    token, wallet = wallet_sign_in(server)
    promoted = cli(server, "role", wallet.address, "maintainer")
    assert promoted.returncode == 0, promoted.stderr
    assert "member → maintainer" in promoted.stdout
    assert me(server, token).json()["role"] == "maintainer"
    listed = cli(server, "list", "--role", "maintainer")
    assert listed.returncode == 0 and wallet.address in listed.stdout, listed.stdout + listed.stderr

    revoked = cli(server, "revoke", wallet.address)
    assert revoked.returncode == 0, revoked.stderr
    assert me(server, token).status_code == 401

    for args, says in ((("role", "nothex", "admin"), "wallet address"), (("role", wallet.address, "owner"), "owner"),
                       (("role", f"token:{admin_token_id(server)}", "member"), "last admin"),
                       (("list", "--kind", "robots"), "robots")):
        refused = cli(server, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stderr.startswith("error: ") and says in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_role_changes_and_revokes_are_in_the_audit_log(server: ServerProcess) -> None:
    token, wallet = wallet_sign_in(server)
    admin_id = admin_token_id(server)
    with server.client() as admin:
        assert admin.put(f"/users/{wallet.address}/role", json={"role": "maintainer"}).status_code == 200
        assert admin.put(f"/users/token:{admin_id}/role", json={"role": "member"}).status_code == 409
    with server.client(token) as member_now_maintainer:
        assert member_now_maintainer.put(f"/users/{wallet.address}/role", json={"role": "admin"}).status_code == 403
    assert cli(server, "revoke", wallet.address, "--ban").returncode == 0
    with server.client() as admin:
        entries = admin.get("/audit", params={"action": "user.*", "limit": 500}).json()["items"]

    def one(**wanted: str) -> dict:
        """The newest entry with these values (the only one for this test's fresh wallet)."""
        found = [e for e in entries if all(e[k] == v for k, v in wanted.items())]
        assert found and (len(found) == 1 or wanted["target"] != wallet.address), (wanted, found)
        return found[0]

    promoted = one(action="user.role_set", target=wallet.address, outcome="ok")
    assert (promoted["actor"], promoted["role"]) == (f"token:{admin_id}", "admin")
    assert promoted["detail"]["role"] == "maintainer"
    assert one(action="user.role_set", target=f"token:{admin_id}", outcome="failed")["actor"] == f"token:{admin_id}"
    refused = one(action="user.role_set", target=wallet.address, outcome="refused")
    assert (refused["actor"], refused["role"]) == (f"wallet:{wallet.address}", "maintainer")
    banned = one(action="user.revoke", target=wallet.address, outcome="ok")
    assert banned["actor"].startswith("cli:") and banned["detail"]["via"] == "cli" and banned["detail"]["ban"] is True
