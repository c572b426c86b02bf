"""The chain's HTTP API served by uvicorn on 127.0.0.1, driven over real sockets with httpx."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from aptos_sdk import ed25519
from fastapi import FastAPI

from cotrain.chain.ledger import Ledger
from cotrain.chain.service import ChainService
from cotrain.chain.settings import ChainSettings
from cotrain.chain.settlement import set_reward_pool, settle_session
from cotrain.db import Base
from cotrain.paths import Layout
from cotrain.server.api import rewards, wallet
from cotrain.server.orm import TrainingSession
from cotrain.server.platform import Platform
from cotrain.server.settings import Settings
from tests.conftest import free_port

from .test_ledger import Rec
from .wallets import Wallet


@dataclass
class Served:
    client: httpx.Client
    chain: ChainService
    origin: str
    app: FastAPI


@pytest.fixture
def api(db_factory, tmp_path):
    key = ed25519.PrivateKey.random()
    app = FastAPI()
    for module in (wallet, rewards):  # as the server includes them
        app.include_router(module.router, prefix="/api/v1")
    # The routes check tokens and permissions through the server's platform (its api_tokens and
    # revoked_tokens tables): a real one, not started, on the same database, with a chain service of
    # the test's own settings and key.
    engine = db_factory.kw["bind"]
    Base.metadata.create_all(engine)
    app.state.platform = Platform(Settings(layout=Layout(tmp_path / "home").ensure(), embedded_worker=False,
                                           database_url=engine.url.render_as_string(hide_password=False),
                                           start_dht=False))
    app.state.platform.chain = ChainService(db_factory, lambda _session_id: None, lambda *_: None,
                                            settings=ChainSettings(network="testnet", chain_id=2), ledger=Ledger(key))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1") as client:
        yield Served(client, app.state.platform.chain, f"http://127.0.0.1:{port}", app)
    server.should_exit = True
    thread.join(5)
    app.state.platform.engine.dispose()


def public_session(session_id: str) -> TrainingSession:
    return TrainingSession(id=session_id, name=session_id, public=True, status="completed", request={},
                           config_path="", config_toml="", model_type="llama2", model_size="debug",
                           strategy="diloco")


def sign_in(client, origin, wallet, chain_id=2):
    nonce = client.post("/auth/nonce", json={"address": wallet.address}).json()
    assert nonce["application"] == origin and nonce["chainId"] == 2
    signed = wallet.sign_message(message=nonce["message"], nonce=nonce["nonce"], application=origin,
                                 chain_id=chain_id)
    body = {"address": wallet.address, "publicKey": wallet.public_key, **signed}
    return client.post("/auth/verify", json=body), body


def test_sign_in_then_my_contributions_and_rewards(api):
    client, chain, origin = api.client, api.chain, api.origin
    wallet, other = Wallet.create(), Wallet.create()
    with chain.factory.begin() as db:
        db.add(public_session("s1"))  # a session's rewards follow its read rule: it must exist and be public
        set_reward_pool(db, chain.ledger, "s1", 1000, "APT")
        settle_session(db, chain.ledger, "s1", [Rec("p1", wallet.address, 100), Rec("p2", other.address, 300),
                                              Rec("p3", other.address, 10, device="cpu", tokens_per_second=10**7)],
                       require_binding=False)
    assert client.get("/me/contributions").status_code == 401
    ok, body = sign_in(client, origin, wallet)
    assert ok.status_code == 200, ok.text
    token = ok.json()["token"]
    assert ok.json()["address"] == wallet.address and "cotrain_wallet" in ok.headers.get("set-cookie", "")
    mine = client.get("/me/contributions", headers={"Authorization": f"Bearer {token}"}).json()
    assert [(c["peerId"], c["status"], c["tokens"]) for c in mine] == [("p1", "verified", 100)]
    rewards = client.get("/me/rewards", headers={"Authorization": f"Bearer {token}"}).json()
    assert [(r["amount"], r["payoutStatus"]) for r in rewards] == [(250, "due")]

    replay = client.post("/auth/verify", json=body)
    assert replay.status_code == 401 and replay.json()["detail"]["reason"] == "replay"
    assert "replay" in replay.json()["detail"]["message"]

    session = client.get("/rewards/sessions/s1").json()
    excluded = [c for c in session["contributors"] if c["status"] == "excluded"]
    assert [c["peerId"] for c in excluded] == ["p3"] and "tokens/s" in excluded[0]["reason"]
    assert sum(r["amount"] for r in session["rewards"]) == 1000


def test_wrong_origin_and_forged_token_are_401_with_reasons(api):
    client = api.client
    wallet = Wallet.create()
    nonce = client.post("/auth/nonce", json={"address": wallet.address}).json()
    signed = wallet.sign_message(message=nonce["message"], nonce=nonce["nonce"], application="https://phish.example",
                                 chain_id=2)
    resp = client.post("/auth/verify", json={"address": wallet.address, "publicKey": wallet.public_key, **signed})
    assert resp.status_code == 401 and resp.json()["detail"]["reason"] == "wrong_origin"
    forged = client.get("/me/rewards", headers={"Authorization": "Bearer v1.e30.AAAA"})
    assert forged.status_code == 401 and "sign in" in forged.json()["detail"]
    bad = client.post("/auth/nonce", json={"address": "not-an-address"})
    assert bad.status_code == 400 and "address" in bad.json()["detail"]["message"]


def test_application_is_never_taken_from_the_host_header(api):
    """Without COTRAIN_PUBLIC_ORIGIN the nonce names this server on the loopback address, whatever Host the
    request claims, and a wallet that signed for the forged host is refused."""
    client, origin = api.client, api.origin
    wallet = Wallet.create()
    forged = client.post("/auth/nonce", json={"address": wallet.address}, headers={"Host": "evil.example"})
    assert forged.status_code == 200 and forged.json()["application"] == origin
    nonce = forged.json()
    signed = wallet.sign_message(message=nonce["message"], nonce=nonce["nonce"], application="http://evil.example",
                                 chain_id=2)
    body = {"address": wallet.address, "publicKey": wallet.public_key, **signed}
    refused = client.post("/auth/verify", json=body, headers={"Host": "evil.example"})
    assert refused.status_code == 401 and refused.json()["detail"]["reason"] == "wrong_origin"
    assert "COTRAIN_PUBLIC_ORIGIN" in refused.json()["detail"]["message"]
    ok, _ = sign_in(client, origin, wallet)
    assert ok.status_code == 200, ok.text


def test_logout_revokes_the_token_and_clears_the_cookie(api):
    client, origin = api.client, api.origin
    ok, _ = sign_in(client, origin, Wallet.create())
    token = ok.json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/me/rewards", headers=bearer).status_code == 200
    assert client.get("/me/rewards").status_code == 200  # the cookie the sign-in set, as a browser sends it
    out = client.post("/auth/logout")
    assert out.status_code == 204 and 'cotrain_wallet=""' in out.headers["set-cookie"]
    assert "cotrain_wallet" not in client.cookies
    for headers in (bearer, {"Cookie": f"cotrain_wallet={token}"}):
        again = client.get("/me/rewards", headers=headers)
        assert again.status_code == 401 and "signed out" in again.json()["detail"]
    assert client.post("/auth/logout", headers=bearer).status_code == 401
