"""Create options that reach other parts: a reward pool (recorded in the chain's ledger at creation) and
DiLoCo compression (mapped to distributed.diloco.compression), both in the OpenAPI schema and validated."""

from __future__ import annotations

import sqlite3

import httpx

from tests.server.conftest import reference_session


def test_reward_pool_and_compression_on_create(servers, cotrain_home):
    server = servers(COTRAIN_EMBEDDED_WORKER="0")
    api = server.client()
    spec = httpx.get(server.url + "/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    assert "rewardPool" in schemas["SessionCreate"]["properties"]
    assert schemas["RewardPoolIn"]["properties"]["amount"]["exclusiveMinimum"] == 0
    assert schemas["DistributedConfigIn"]["properties"]["compression"]["anyOf"][0]["enum"] == [
        "none", "fp16", "int8", "int4", "topk"]

    body = reference_session(autoStart=False, rewardPool={"amount": 0})
    refused = api.post("/sessions", json=body)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "rewardPool", "amount"]
    body["rewardPool"] = {"amount": 5_000_000, "asset": "dollars"}
    assert api.post("/sessions", json=body).status_code == 422
    body["distributedConfig"].update(strategy="diloco", innerSteps=5, compression="zip")
    body["rewardPool"] = {"amount": 5_000_000}
    refused = api.post("/sessions", json=body)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "compression"

    body["distributedConfig"].update(compression="topk", topkFraction=0.9)
    refused = api.post("/sessions", json=body)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "topkFraction"

    body["distributedConfig"].update(compression="topk", topkFraction=0.01)
    created = api.post("/sessions", json=body)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    config = api.get(f"/sessions/{sid}/config").text
    assert 'compression = "topk"' in config and "topk_fraction = 0.01" in config
    with sqlite3.connect(cotrain_home / "cotrain.db") as db:
        assert db.execute("SELECT amount, asset FROM chain_reward_pools WHERE session_id = ?", (sid,)).fetchall() == [
            (5_000_000, "APT")]
        assert db.execute("SELECT kind FROM chain_ledger WHERE session_id = ?", (sid,)).fetchall() == [("reward_pool",)]



def test_the_server_works_without_its_ledger_key(servers):
    """A ledger key that cannot be loaded (COTRAIN_LEDGER_KEY is not a key; aptos-sdk itself is a hard
    dependency): sessions work, only a reward pool and wallet sign-in are refused (503) with a sentence
    saying what to do."""
    server = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_LEDGER_KEY="not-a-key")
    api = server.client()
    assert api.post("/sessions", json=reference_session(autoStart=False)).status_code == 201
    refused = api.post("/sessions", json=reference_session(autoStart=False, rewardPool={"amount": 10}))
    assert refused.status_code == 503 and "without rewardPool" in refused.json()["detail"], refused.text
    assert "COTRAIN_LEDGER_KEY" in refused.json()["detail"]
    assert api.get("/sessions").json()["total"] == 1  # the refused one was not kept
    nonce = httpx.post(server.url + "/api/v1/auth/nonce", json={"address": "0x1"}, timeout=30)
    assert nonce.status_code == 503 and "COTRAIN_LEDGER_KEY" in nonce.json()["detail"], nonce.text
