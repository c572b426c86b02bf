"""The REST API on a real server (no executor, so nothing trains): validation that names the
field, the session lifecycle while waiting, owners and tokens, the hivemind envelopes, health,
Prometheus metrics and the OpenAPI schema."""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from tests.conftest import REFERENCE
from tests.server.conftest import reference_session


@pytest.fixture
def server(servers):
    return servers(COTRAIN_EMBEDDED_WORKER="0")


def test_reference_body_creates_a_session_with_its_toml(server):
    api = server.client()
    body = json.loads((REFERENCE / "session-create.json").read_text())  # unchanged: llama2 7B on 4 x 8 GPUs, DiLoCo
    created = api.post("/sessions", json=body)
    assert created.status_code == 201, created.text
    session = created.json()
    assert (session["modelSize"], session["strategy"], session["status"]) == ("7B", "diloco", "queued")
    toml = api.get(f"/sessions/{session['id']}/config").text
    for line in ('size = "7B"', 'precision = "bf16"', "batch_size = 32", "learning_rate = 0.0001", "epochs = 10",
                 'optimizer = "adamw"', "nodes = 4", "gpus_per_node = 8", 'strategy = "diloco"'):
        assert line in toml
    assert api.get(f"/hivemind/training/{session['id']}").json() == {
        "status": "success",
        "data": {"task_id": session["id"], "status": "queued", "progress": 0.0, "step": 0, "total_steps": None,
                 "loss": None, "participants": 0, "error": None},
    }


INVALID = [  # (change, the field named, words of the message)
    ({"modelConfig": {"type": "llama2", "size": "huge"}}, ["body", "modelConfig", "size"], '"debug"'),
    ({"trainingConfig": {"batchSize": 0}}, ["body", "trainingConfig", "batchSize"], "greater than 0"),
    ({"trainingConfig": {"batchSzie": 8}}, ["body", "trainingConfig", "batchSzie"], "not permitted"),
    ({"distributedConfig": {"strategy": "magic"}}, ["body", "distributedConfig", "strategy"], "diloco"),
    ({"trainingConfig": {"batchSize": 30}, "distributedConfig": {"gpusPerNode": 8}},
     ["body", "trainingConfig", "batchSize"], "multiple of the 8 processes"),
]


def test_invalid_input_is_422_naming_the_field(server):
    for change, loc, words in INVALID:
        response = server.client().post("/sessions", json={"name": "x", **change})
        assert response.status_code == 422
        errors = response.json()["detail"]
        assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors


def test_waiting_session_lifecycle(server):
    api = server.client()
    draft = api.post("/sessions", json=reference_session(autoStart=False, name="draft one")).json()
    sid = draft["id"]
    assert draft["status"] == "draft"
    edited = api.patch(f"/sessions/{sid}", json={"trainingConfig": {"learningRate": 0.01}, "name": "renamed"})
    assert edited.status_code == 200 and edited.json()["name"] == "renamed"
    assert "learning_rate = 0.01" in api.get(f"/sessions/{sid}/config").text
    bad = api.patch(f"/sessions/{sid}", json={"modelConfig": {"size": "nope"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "modelConfig", "size"]
    assert api.post(f"/sessions/{sid}/start").json()["status"] == "queued"
    assert api.put(f"/sessions/{sid}/priority", json={"priority": 7}).json()["priority"] == 7
    other = api.post("/sessions", json=reference_session(name="other")).json()["id"]
    assert api.get(f"/sessions/{sid}/status").json()["queuePosition"] == 1  # priority 7 goes first
    assert api.get(f"/sessions/{other}/status").json()["queuePosition"] == 2

    page = api.get("/sessions", params={"status": "queued", "limit": 1}).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    assert api.get("/sessions", params={"q": "renam"}).json()["items"][0]["id"] == sid
    assert api.get("/sessions", params={"status": "bogus"}).status_code == 422

    assert api.post(f"/sessions/{sid}/retry").status_code == 409
    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelled"
    assert api.post(f"/sessions/{sid}/retry").json()["status"] == "queued"
    assert api.delete(f"/sessions/{other}").status_code == 204
    missing = api.get(f"/sessions/{other}")
    assert missing.status_code == 404 and "GET /api/v1/sessions" in missing.json()["detail"]
    messages = api.get(f"/sessions/{sid}/events").json()
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [m["data"]["status"] for m in messages] == ["draft", "draft", "queued", "cancelled", "queued"]


def test_tokens_owners_and_public_reads(server):
    admin = server.client()
    anonymous = server.client(token=None)
    assert anonymous.post("/sessions", json=reference_session()).status_code == 401
    assert server.client(token="ct_wrong").get("/sessions").status_code == 401

    alice_token = admin.post("/auth/tokens", json={"name": "alice"}).json()["token"]
    bob_token = admin.post("/auth/tokens", json={"name": "bob"}).json()["token"]
    alice, bob = server.client(alice_token), server.client(bob_token)
    assert bob.post("/auth/tokens", json={"name": "eve"}).status_code == 403
    assert alice.get("/auth/me").json()["name"] == "alice"

    public = alice.post("/sessions", json=reference_session()).json()["id"]
    private = alice.post("/sessions", json=reference_session(public=False)).json()["id"]
    assert anonymous.get(f"/sessions/{public}").status_code == 200  # reading public sessions needs no token
    assert anonymous.get(f"/sessions/{private}").status_code == 404
    assert bob.get(f"/sessions/{private}").status_code == 404
    assert alice.get(f"/sessions/{private}").status_code == 200
    denied = bob.post(f"/sessions/{public}/cancel")
    assert denied.status_code == 403 and "owner" in denied.json()["detail"]
    assert bob.get(f"/sessions/{public}/join").json()["sessionId"] == public  # others can join
    assert admin.post(f"/sessions/{public}/cancel").status_code == 200  # admins manage everything
    assert {s["id"] for s in anonymous.get("/sessions").json()["items"]} == {public}


def test_health_metrics_hivemind_envelopes_and_openapi(server):
    root = httpx.Client(base_url=server.url, timeout=30)
    api = server.client()
    assert api.get("/health").json()["status"] == "success"
    assert root.get("/health").json()["data"]["database"] == "sqlite"
    metrics = root.get("/metrics")
    assert 'cotrain_sessions{status="queued"}' in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'cotrain_http_requests_total{method="GET",code="2xx"}' in metrics.text
    assert "cotrain_http_request_duration_seconds_count" in metrics.text
    status = api.get("/hivemind/status").json()
    assert status["status"] == "success" and status["data"]["status"] == "stopped"
    assert api.get("/hivemind/peers").json() == {"status": "success", "data": []}
    submitted = api.post("/hivemind/train", json=reference_session())
    assert submitted.status_code == 201 and submitted.json()["data"]["task_id"]

    spec = root.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/api/v1/sessions", "/api/v1/sessions/{session_id}/metrics", "/api/v1/hivemind/start",
                 "/api/v1/hivemind/status", "/api/v1/hivemind/train", "/api/v1/hivemind/peers",
                 "/api/v1/hivemind/peers/connect", "/api/v1/hivemind/training/{task_id}", "/api/v1/health",
                 "/api/v1/models", "/api/v1/models/compare"):
        assert path in paths, path
    create = spec["components"]["schemas"]["SessionCreate"]["properties"]
    assert {"name", "modelConfig", "trainingConfig", "distributedConfig", "dataConfig", "priority"} <= set(create)
    assert "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()


def test_first_start_prints_the_admin_token_once(servers, cotrain_home):
    first = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_ADMIN_TOKEN="")
    token_file = cotrain_home / "admin-token"
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert first.client(token).get("/auth/me").json()["is_admin"] is True
    first.stop()
    shown = [line for line in first.log_path.read_text().splitlines() if token in line]
    assert len(shown) == 2 and shown[1].endswith(f"/?token={token}")  # the token, then the sign-in link
    second = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_ADMIN_TOKEN="")
    assert second.client(token).get("/auth/me").status_code == 200
    assert token not in second.log_path.read_text()
    import sqlite3

    stored = sqlite3.connect(cotrain_home / "cotrain.db").execute("SELECT token_hash FROM api_tokens").fetchall()
    assert all(token not in row[0] for row in stored)


def test_example_session_is_created_once(servers):
    first = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_EXAMPLE_SESSION="1")
    items = first.client().get("/sessions").json()["items"]
    assert len(items) == 1 and items[0]["modelSize"] == "debug" and items[0]["status"] == "draft"  # waits for Start
    first.stop()
    second = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_EXAMPLE_SESSION="1")
    assert second.client().get("/sessions").json()["total"] == 1


def test_private_sessions_stream_only_to_their_owner(server):
    from tests.server.conftest import WSCollector, wait_until

    admin = server.client()
    alice_token = admin.post("/auth/tokens", json={"name": "alice"}).json()["token"]
    alice = server.client(alice_token)
    private = alice.post("/sessions", json=reference_session(public=False, autoStart=False)).json()["id"]
    public = alice.post("/sessions", json=reference_session(autoStart=False)).json()["id"]

    anyone = WSCollector(server.ws_url)
    owner = WSCollector(f"{server.ws_url}?token={alice_token}")
    try:
        for ws in (anyone, owner):
            ws.send({"action": "subscribe", "sessionId": "*"})
        anyone.send({"action": "subscribe", "sessionId": private, "after": 0})
        wait_until(lambda: anyone.of("error") and len(owner.of("subscribed")) == 1, 10, "acknowledgements")
        assert "No session" in anyone.of("error")[0]["data"]["message"]
        alice.patch(f"/sessions/{private}", json={"name": "secret"})
        alice.patch(f"/sessions/{public}", json={"name": "open"})
        wait_until(lambda: len(owner.of("training.status")) == 2 and anyone.of("training.status"), 10, "the updates")
        assert {m["data"]["sessionId"] for m in owner.of("training.status")} == {private, public}
        assert {m["data"]["sessionId"] for m in anyone.of("training.status")} == {public}
        assert all(set(m) == {"event", "data"} for m in owner.messages)
    finally:
        anyone.close()
        owner.close()
    bad = WSCollector(f"{server.ws_url}?token=ct_wrong")
    wait_until(lambda: bad.ws.close_code is not None, 10, "the refusal")
    assert bad.ws.close_code == 1008


HOSTILE = [  # (method, path, body)
    ("post", "/sessions", {"name": "x", "trainingConfig": {"maxSteps": 10**30}}),
    ("post", "/sessions", {"name": "x\u0000y"}),
    ("post", "/sessions", {"name": "x", "dataConfig": {"dataPath": "/a\u0000b"}}),
    ("get", "/sessions?offset=99999999999999999999", None),
    ("get", "/sessions?owner=99999999999999999999", None),
    ("get", "/sessions?q=%00", None),
    ("get", "/sessions/..%2F..%2Fetc", None),
    ("get", "/sessions/a%00b", None),
    ("get", "/models/99999999999999999999", None),
    ("get", "/models/compare?ids=1&ids=99999999999999999999", None),
    ("get", "/models?session=%00", None),
    ("get", "/hivemind/training/%00", None),
    ("post", "/hivemind/peers/connect", {"address": "/ip4/x\u0000"}),
    ("delete", "/auth/tokens/99999999999999999999", None),
]


def test_hostile_input_is_a_4xx_never_a_500(server):
    api = server.client()
    for method, path, body in HOSTILE:
        response = api.request(method, path, json=body) if body is not None else api.request(method, path)
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text)


def test_infinite_learning_rate_and_null_rename_are_422(server):
    api = server.client()
    raw = '{"name": "x", "trainingConfig": {"learningRate": Infinity}}'
    response = api.post("/sessions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    sid = api.post("/sessions", json=reference_session(autoStart=False)).json()["id"]
    renamed = api.patch(f"/sessions/{sid}", json={"name": None})
    assert renamed.status_code == 422 and renamed.json()["detail"][0]["loc"] == ["body", "name"]


def test_the_last_admin_token_cannot_be_revoked(server):
    admin = server.client()
    me = admin.get("/auth/me").json()
    refused = admin.delete(f"/auth/tokens/{me['id']}")
    assert refused.status_code == 409 and "last admin token" in refused.json()["detail"]
    second = admin.post("/auth/tokens", json={"name": "ops", "is_admin": True}).json()
    assert admin.delete(f"/auth/tokens/{me['id']}").status_code == 204
    assert admin.get("/auth/me").status_code == 401
    assert server.client(second["token"]).get("/auth/me").json()["is_admin"] is True
