"""The exploits of issue 11 against the read rule, replayed on a real server: a private session's
model versions, zip, rewards, events, logs and live stream were open to anyone. Now everyone but its
owner, maintainers and admins gets 404 everywhere, and other people never see its paths."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect as ws_connect

from cotrain.server import signed_urls
from cotrain.server.internals import HIDDEN_KEYS
from tests.security.conftest import ADMIN_TOKEN, TINY, WSCollector, api_token, reference_session, wallet_sign_in
from tests.server.conftest import wait_until

SESSION_ROUTES = ("", "/config", "/status", "/metrics", "/events", "/logs", "/checkpoints", "/participants",
                  "/join", "/model")


def _completed(api: httpx.Client, session_id: str) -> dict:
    done = wait_until(lambda: (s := api.get(f"/sessions/{session_id}").json())["status"]
                      in ("completed", "failed") and s, 300, "the session to finish")
    assert done["status"] == "completed", done["error"]
    return done


def test_a_private_session_is_404_to_everyone_else_everywhere(servers, cotrain_home):
    server = servers()
    owner_token, _ = wallet_sign_in(server)
    stranger_token, _ = wallet_sign_in(server)
    maintainer_token = api_token(server, "maintainer")
    body = reference_session(name="secret run", public=False)
    with server.client(owner_token) as owner:
        created = owner.post("/sessions", json=body)
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        _completed(owner, session_id)
        versions = owner.get("/models", params={"session": session_id}).json()
        assert len(versions) == 1 and versions[0]["path"], versions  # the owner sees where it is
        model_id = versions[0]["id"]
        assert owner.get(f"/models/{model_id}/download").status_code == 200

    outsiders = {"anonymous": None, "member": stranger_token}
    for who, token in outsiders.items():
        with server.client(token) as client:
            for route in SESSION_ROUTES:
                response = client.get(f"/sessions/{session_id}{route}")
                assert response.status_code == 404, (who, route, response.status_code, response.text[:200])
            assert session_id not in {s["id"] for s in client.get("/sessions").json()["items"]}, who
            assert all(v["session_id"] != session_id for v in client.get("/models").json()), who
            for path in (f"/models/{model_id}", f"/models/{model_id}/download", f"/rewards/sessions/{session_id}",
                         f"/models/compare?ids={model_id}&ids={model_id}"):
                response = client.get(path)
                assert response.status_code == 404, (who, path, response.status_code, response.text[:200])
            assert client.get("/models", params={"session": session_id}).status_code == 404

        url = server.ws_url + (f"?token={token}" if token else "")
        with ws_connect(url, open_timeout=10) as ws:
            ws.send(json.dumps({"action": "subscribe", "sessionId": session_id, "after": 0}))
            reply = json.loads(ws.recv(timeout=10))
            assert reply["event"] == "error" and "No session" in reply["data"]["message"], (who, reply)
            ws.send(json.dumps({"action": "subscribe", "sessionId": "*", "after": {"sessions": {session_id: 0},
                                                                                   "since": 0}}))
            assert json.loads(ws.recv(timeout=10))["event"] == "subscribed"
            ws.send(json.dumps({"action": "ping"}))
            # nothing of the private session is replayed before the pong
            assert json.loads(ws.recv(timeout=10))["event"] == "pong", who

    for token in (maintainer_token, ADMIN_TOKEN):  # maintainers and admins read private sessions
        with server.client(token) as client:
            assert client.get(f"/sessions/{session_id}").status_code == 200
            assert client.get(f"/models/{model_id}").status_code == 200
            assert client.get(f"/rewards/sessions/{session_id}").status_code == 200


def test_signed_download_links_expire_and_name_one_path(servers, cotrain_home):
    server = servers()
    with server.client() as admin:
        created = admin.post("/sessions", json=reference_session(name="links", public=False))
        session_id = created.json()["id"]
        _completed(admin, session_id)
        model_id = admin.get("/models", params={"session": session_id}).json()[0]["id"]
        admin_id = admin.get("/auth/me").json()["id"]
    secret = (cotrain_home / "url-secret").read_bytes().strip()
    path = f"/api/v1/models/{model_id}/download"
    with httpx.Client(base_url=server.url, timeout=30) as client:
        good = client.get(signed_urls.sign(secret, path, admin_id))
        assert good.status_code == 200 and good.headers["content-type"] == "application/zip"
        expired = client.get(signed_urls.sign(secret, path, admin_id, now=time.time() - 3600))
        assert expired.status_code == 403 and "expired" in expired.text
        other_path = signed_urls.sign(secret, f"/api/v1/models/{model_id + 1}/download", admin_id)
        assert client.get(path + "?" + other_path.split("?", 1)[1]).status_code == 403
        forged = signed_urls.sign(b"not the server's secret", path, admin_id)
        assert client.get(forged).status_code == 403
        assert client.get(path).status_code == 404  # no link, no token: a private session's zip is not there


def test_other_people_never_see_paths_hosts_or_tracebacks(servers, cotrain_home):
    """A public session that fails on a missing data file: its owner sees the path in the error and
    the logs; a stranger sees the same error with `<path>`, and no worker host."""
    server = servers()
    missing = cotrain_home / "datasets" / "raw" / "nothing-here.txt"
    data = {k: v for k, v in TINY["dataConfig"].items() if k != "dataset"}
    body = reference_session(name="fails", public=True, maxRetries=0, dataConfig={**data, "dataPath": str(missing)})
    with server.client() as admin:
        created = admin.post("/sessions", json=body)
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        failed = wait_until(lambda: (s := admin.get(f"/sessions/{session_id}").json())["status"] == "failed" and s,
                            180, "the session to fail")
        admin_logs = json.dumps(admin.get(f"/sessions/{session_id}/logs").json())
        assert str(cotrain_home) in (failed["error"] or "") + admin_logs
    stranger, _ = wallet_sign_in(server)
    for token in (None, stranger):
        with server.client(token) as client:
            seen = [client.get(f"/sessions/{session_id}{part}").text
                    for part in ("", "/logs", "/events", "/status", "/config")]
            for text in seen:
                assert str(cotrain_home) not in text and "Traceback" not in text, text[:500]
            assert client.get(f"/sessions/{session_id}").json()["workerId"] is None
            assert "<path>" in client.get(f"/sessions/{session_id}").json()["error"]


def _keys(value: Any) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def test_each_hidden_key_reaches_the_owner_and_no_one_else(servers, cotrain_home):
    """internals.HIDDEN_KEYS are the keys that really carry a path or a process where `scrub_data` applies
    (a session's request and its messages): a public session that reads a data folder and writes
    checkpoints shows each of them to its owner (`dataPath` in its request, `pid` in a status message,
    `path` in a checkpoint message) and none to anyone else, over REST, the WebSocket's live fan-out
    and its replay."""
    server = servers()
    corpus = cotrain_home / "datasets" / "raw" / "corpus"  # a folder of documents: Python's own sources
    corpus.mkdir(parents=True, exist_ok=True)
    for source in sorted(Path(os.__file__).parent.glob("*.py"))[:40]:
        (corpus / f"{source.stem}.txt").write_text(source.read_text(errors="replace"))
    data = {k: v for k, v in TINY["dataConfig"].items() if k != "dataset"}
    body = reference_session(name="hidden keys", public=True, dataConfig={**data, "dataPath": str(corpus)})
    live = WSCollector(server.ws_url)  # anonymous, subscribed before the session exists: the live fan-out
    try:
        live.send({"action": "subscribe", "sessionId": "*"})
        wait_until(lambda: live.of("subscribed"), 30, "the live subscription")
        with server.client() as owner:
            created = owner.post("/sessions", json=body)
            assert created.status_code == 201, created.text
            session_id = created.json()["id"]
            _completed(owner, session_id)
            owner_seen = [owner.get(f"/sessions/{session_id}").json()["request"],
                          owner.get(f"/sessions/{session_id}/events").json()]
        assert HIDDEN_KEYS == {"dataPath", "pid", "path"}  # a key added there needs its place in this run
        assert HIDDEN_KEYS <= _keys(owner_seen), HIDDEN_KEYS - _keys(owner_seen)  # each one really occurs
        wait_until(lambda: any(m["data"].get("status") == "completed" for m in live.of("training.status")), 60,
                   "the live completed status")
        live_seen = [m for m in live.messages if m["event"].startswith("training.")]
    finally:
        live.close()
    stranger, _ = wallet_sign_in(server)
    for token in (None, stranger):
        with server.client(token) as client:
            seen: list[Any] = [client.get(f"/sessions/{session_id}").json()["request"],
                               client.get(f"/sessions/{session_id}/events").json()]
        with ws_connect(server.ws_url + (f"?token={token}" if token else ""), open_timeout=10) as ws:
            ws.send(json.dumps({"action": "subscribe", "sessionId": session_id, "after": 0}))
            while (reply := json.loads(ws.recv(timeout=10)))["event"] != "subscribed":
                seen.append(reply)
            ws.send(json.dumps({"action": "ping"}))
            while (reply := json.loads(ws.recv(timeout=10)))["event"] != "pong":
                seen.append(reply)
        assert len(seen) > 2, seen  # the replay came
        for view in (seen, live_seen):
            assert not HIDDEN_KEYS & _keys(view), HIDDEN_KEYS & _keys(view)
            assert str(cotrain_home) not in json.dumps(view)
