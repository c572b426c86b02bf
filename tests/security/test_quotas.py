"""Quotas, priority and reward pools (session_policy.py) against a real `cotrain up`: the issue's
exploits replayed by a stranger who signed in with a fresh Aptos key, and what maintainers and admins
may still do. No worker runs (COTRAIN_EMBEDDED_WORKER=0), so sessions that are queued stay queued.
The treasury test runs the server with the `aptos` payout backend against the fake Aptos node (a real
HTTP server on loopback speaking the Aptos REST API)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from aptos_sdk.account import Account

from tests.chain.fake_aptos import FakeAptosServer
from tests.security.conftest import ADMIN_TOKEN, ServerProcess, api_token, reference_session, wallet_sign_in

POOL_MAX = 5000  # COTRAIN_REWARD_POOL_MAX of the module's server


def quiet_env(home: Path, **extra: str) -> dict[str, str]:
    """tests/server's server_env, without a worker: nothing ever runs."""
    env = dict(os.environ)
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    env.update(COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0",
               COTRAIN_EMBEDDED_WORKER="0", COTRAIN_RATE_SESSION_CREATE="10000/minute", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("quotas") / "home"
    home.mkdir()
    process = ServerProcess(home, quiet_env(home, COTRAIN_REWARD_POOL_MAX=str(POOL_MAX))).start()
    yield process
    process.stop(signal.SIGTERM)


def member(server: ServerProcess) -> httpx.Client:
    """A stranger with a freshly generated Aptos key, signed in: a member."""
    token, _ = wallet_sign_in(server)
    return server.client(token)


def draft(**changes: Any) -> dict[str, Any]:
    return reference_session(autoStart=False, **changes)


def refused(answer: httpx.Response, *words: str, status: int = 403) -> str:
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "Traceback" not in detail, detail
    for word in words:
        assert word in detail, (word, detail)
    return detail


def test_a_members_reward_pool_is_refused_with_who_can(server):
    stranger = member(server)
    before = server.client().get("/sessions").json()["total"]
    detail = refused(stranger.post("/sessions", json=draft(rewardPool={"amount": 1_000_000_000_000})),
                     "admins", "maintainers", "COTRAIN_REWARD_POOL_MAX", "without rewardPool")
    assert "1000000000000" in detail
    assert server.client().get("/sessions").json()["total"] == before  # nothing was created, no pool recorded


def test_maintainer_pools_up_to_the_max_admin_any(server):
    maintainer = server.client(api_token(server, "maintainer", "ops"))
    assert maintainer.post("/sessions", json=draft(rewardPool={"amount": POOL_MAX})).status_code == 201
    detail = refused(maintainer.post("/sessions", json=draft(rewardPool={"amount": POOL_MAX + 1})),
                     "COTRAIN_REWARD_POOL_MAX", str(POOL_MAX), str(POOL_MAX + 1), "admins")
    assert "maintainers" in detail
    admin = server.client()
    created = admin.post("/sessions", json=draft(rewardPool={"amount": 1_000_000_000_000}))
    assert created.status_code == 201, created.text
    # a pool cannot be opened or raised by an edit, by anyone
    for client in (admin, maintainer):
        patched = client.patch(f"/sessions/{created.json()['id']}", json={"rewardPool": {"amount": 10**13}})
        assert patched.status_code == 422 and patched.json()["detail"][0]["loc"] == ["body", "rewardPool"], patched.text


def test_world_size_model_size_and_token_budget(server):
    stranger = member(server)
    huge = draft(distributedConfig={"nodes": 100_000, "gpusPerNode": 1024, "strategy": "diloco", "innerSteps": 10},
                 trainingConfig={"batchSize": 1024, "learningRate": 0.003, "maxSteps": 40})  # batch per peer
    detail = refused(stranger.post("/sessions", json=huge), "world-size quota", "COTRAIN_QUOTA_WORLD_SIZE",
                     "102400000", "maintainers and admins")
    assert "100000 nodes × 1024 GPUs" in detail
    refused(stranger.post("/sessions", json=draft(modelConfig={"type": "llama2", "size": "70B", "precision": "bf16"})),
            "'70B'", "COTRAIN_QUOTA_MODEL_SIZES", "maintainers and admins")
    long = draft(trainingConfig={"batchSize": 8, "learningRate": 0.003, "maxSteps": 10**12})
    detail = refused(stranger.post("/sessions", json=long), "token budget", "COTRAIN_QUOTA_TOKENS",
                     "maxSteps 1000000000000 × batchSize 8 × seqLength 64")
    assert "512,000,000,000,000" in detail
    forever = draft(trainingConfig={"batchSize": 8, "epochs": 10**6}, dataConfig={"dataset": "stdlib"})
    refused(stranger.post("/sessions", json=forever), "token budget", "epochs 1000000", "stdlib corpus",
            "Lower trainingConfig.epochs")
    # within every quota: accepted, as before
    ok = stranger.post("/sessions", json=draft(distributedConfig={"nodes": 2, "gpusPerNode": 4, "strategy": "ddp"}))
    assert ok.status_code == 201, ok.text
    # an edit cannot raise past a quota either
    sid = ok.json()["id"]
    wider = {"distributedConfig": {"nodes": 4}, "trainingConfig": {"batchSize": 32}}
    refused(stranger.patch(f"/sessions/{sid}", json=wider), "COTRAIN_QUOTA_WORLD_SIZE", "16 processes")
    refused(stranger.patch(f"/sessions/{sid}", json={"modelConfig": {"size": "7B"}}), "COTRAIN_QUOTA_MODEL_SIZES")
    refused(stranger.patch(f"/sessions/{sid}", json={"trainingConfig": {"maxSteps": 10**11}}), "COTRAIN_QUOTA_TOKENS")
    assert stranger.patch(f"/sessions/{sid}", json={"name": "renamed"}).status_code == 200


def test_maintainers_and_admins_may_exceed_the_quotas(server):
    big = draft(modelConfig={"type": "llama2", "size": "70B", "precision": "bf16"},
                trainingConfig={"batchSize": 1024, "learningRate": 0.0001, "maxSteps": 10**9},
                distributedConfig={"nodes": 64, "gpusPerNode": 8, "strategy": "fsdp"}, priority=50)
    for client in (server.client(api_token(server, "maintainer", "big-runs")), server.client()):
        created = client.post("/sessions", json=big)
        assert created.status_code == 201, created.text
        assert created.json()["priority"] == 50 and created.json()["modelSize"] == "70B"
    # the schema's hard limits stay for everyone
    beyond = draft(distributedConfig={"nodes": 100_001, "gpusPerNode": 1, "strategy": "ddp"})
    assert server.client().post("/sessions", json=beyond).status_code == 422


def test_priority_above_zero_needs_a_maintainer(server):
    stranger = member(server)
    refused(stranger.post("/sessions", json=draft(priority=100)), "priority of 100", "maintainers and admins")
    sid = stranger.post("/sessions", json=draft(priority=-5)).json()["id"]  # lowering is anyone's
    refused(stranger.put(f"/sessions/{sid}/priority", json={"priority": 100}), "maintainers and admins")
    refused(stranger.patch(f"/sessions/{sid}", json={"priority": 1}), "priority of 1")
    assert stranger.put(f"/sessions/{sid}/priority", json={"priority": 0}).json()["priority"] == 0
    assert server.client().put(f"/sessions/{sid}/priority", json={"priority": 100}).json()["priority"] == 100
    # the owner may still edit (and lower) what an admin raised
    assert stranger.patch(f"/sessions/{sid}", json={"name": "still mine"}).json()["priority"] == 100
    assert stranger.put(f"/sessions/{sid}/priority", json={"priority": 10}).json()["priority"] == 10
    maintainer = server.client(api_token(server, "maintainer", "prio"))
    assert maintainer.put(f"/sessions/{sid}/priority", json={"priority": 99}).status_code == 403  # not theirs
    own = maintainer.post("/sessions", json=draft(priority=100))
    assert own.status_code == 201 and own.json()["priority"] == 100


def test_active_sessions_quota_counts_queued_not_drafts(server):
    stranger = member(server)
    queued = [stranger.post("/sessions", json=reference_session()) for _ in range(2)]
    assert [q.json()["status"] for q in queued] == ["queued", "queued"]
    refused(stranger.post("/sessions", json=reference_session()), "You already have 2 sessions",
            "COTRAIN_QUOTA_ACTIVE_SESSIONS", "autoStart: false", "maintainers and admins")
    waiting = stranger.post("/sessions", json=draft())  # drafts do not count
    assert waiting.status_code == 201, waiting.text
    refused(stranger.post(f"/sessions/{waiting.json()['id']}/start"), "COTRAIN_QUOTA_ACTIVE_SESSIONS")
    assert stranger.post(f"/sessions/{queued[0].json()['id']}/cancel").json()["status"] == "cancelled"
    assert stranger.post(f"/sessions/{waiting.json()['id']}/start").json()["status"] == "queued"
    refused(stranger.post(f"/sessions/{queued[0].json()['id']}/retry"), "COTRAIN_QUOTA_ACTIVE_SESSIONS")
    # another member's quota is their own
    assert member(server).post("/sessions", json=reference_session()).status_code == 201
    maintainer = server.client(api_token(server, "maintainer", "queue"))
    assert all(maintainer.post("/sessions", json=reference_session()).status_code == 201 for _ in range(3))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_creates_cannot_both_take_the_last_place(server, tmp_path, request, database):
    """Six creates at once by one member: the count and the insert share one write lock (SQLite's, or
    a PostgreSQL advisory lock), so exactly the quota's two are queued."""
    if database == "postgresql":
        home = tmp_path / "home"
        home.mkdir()
        server = ServerProcess(home, quiet_env(home, DATABASE_URL=request.getfixturevalue("pg_url"))).start()
    try:
        stranger = member(server)
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: stranger.post("/sessions", json=reference_session()), range(6)))
        assert sorted(a.status_code for a in answers) == [201, 201, 403, 403, 403, 403], [a.text for a in answers]
    finally:
        if database == "postgresql":
            server.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_aptos_pools_need_the_treasury_to_cover_every_open_pool(tmp_path, request, database):
    treasury = Account.generate()
    env = {"DATABASE_URL": request.getfixturevalue("pg_url")} if database == "postgresql" else {}
    node = FakeAptosServer().__enter__()
    node.node.fund(str(treasury.address()), 1000)
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, quiet_env(
        home, COTRAIN_PAYOUT_BACKEND="aptos", APTOS_NODE_URL=node.url, APTOS_NETWORK="local",
        COTRAIN_TREASURY_KEY=treasury.private_key.hex(), **env))
    try:
        admin = server.start().client()
        first = admin.post("/sessions", json=draft(rewardPool={"amount": 600}))
        assert first.status_code == 201, first.text
        detail = refused(admin.post("/sessions", json=draft(rewardPool={"amount": 500})),
                         str(treasury.address()), "holds 1000 APT", "already promise 600", "100 more", status=409)
        assert "Fund the treasury" in detail
        assert admin.post("/sessions", json=draft(rewardPool={"amount": 400})).status_code == 201  # 1000 in all
        node.node.fund(str(treasury.address()), 50)
        assert admin.post("/sessions", json=draft(rewardPool={"amount": 51})).status_code == 409
        assert admin.post("/sessions", json=draft(rewardPool={"amount": 50})).status_code == 201
        # deleting a session that never settled releases its pool
        assert admin.delete(f"/sessions/{first.json()['id']}").status_code == 204
        assert admin.post("/sessions", json=draft(rewardPool={"amount": 600})).status_code == 201
        assert admin.post("/sessions", json=draft()).status_code == 201  # no pool: no balance asked
        node.__exit__(None, None, None)  # the node goes away: the balance cannot be read, the pool is refused
        refused(admin.post("/sessions", json=draft(rewardPool={"amount": 1})), "cannot be read", "APTOS_NODE_URL",
                "without rewardPool", status=503)
    finally:
        server.stop()
        node.__exit__(None, None, None)


def test_a_data_path_is_measured_or_must_be_bounded(server):
    """Without maxSteps the budget is epochs × the corpus's bytes: a dataPath inside the data roots is
    measured on the server; one that is not there must be bounded by maxSteps or maxBytes."""
    raw = server.home / "datasets" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "corpus.txt").write_text("the quick brown fox\n" * 5000)  # 100,000 bytes
    stranger = member(server)
    unbounded = {"batchSize": 8, "learningRate": 0.003, "epochs": 1}
    ok = stranger.post("/sessions", json=draft(trainingConfig=unbounded,
                                               dataConfig={"dataPath": "datasets/raw/corpus.txt", "seqLength": 64}))
    assert ok.status_code == 201, ok.text
    refused(stranger.post("/sessions", json=draft(trainingConfig={**unbounded, "epochs": 100_000},
                                                  dataConfig={"dataPath": "datasets/raw/corpus.txt"})),
            "10,000,000,000 tokens", "the 100000 bytes under dataPath")
    refused(stranger.post("/sessions", json=draft(trainingConfig=unbounded,
                                                  dataConfig={"dataPath": "datasets/raw/elsewhere"})),
            "is not on this server", "trainingConfig.maxSteps or dataConfig.maxBytes")
    elsewhere_bounded = {"dataPath": "datasets/raw/elsewhere", "maxBytes": 10**6}
    bounded = stranger.post("/sessions", json=draft(trainingConfig=unbounded, dataConfig=elsewhere_bounded))
    assert bounded.status_code == 201, bounded.text
