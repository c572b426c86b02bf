"""The issue's end-to-end test on embedded defaults (SQLite, in-process fan-out): a session
created from the original front end's JSON trains on the real engine, a real WebSocket client
receives `training.progress` with every field of the reference message, the session completes
and a model version appears."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from tests.conftest import REFERENCE
from tests.server.conftest import WSCollector, reference_session, wait_until

pytestmark = pytest.mark.slow


def assert_reference_shape(message: dict, reference: dict) -> None:
    """Every key of the reference message is present, recursively (values are live)."""
    assert set(message) >= set(reference), f"missing {set(reference) - set(message)}"
    for key, value in reference.items():
        if isinstance(value, dict):
            assert isinstance(message[key], dict), key
            assert_reference_shape(message[key], value)


def run_reference_session(server, ws_server=None) -> str:
    """Create, stream over `ws_server`'s WebSocket (default: the same server), complete, replay."""
    ws_server = ws_server or server
    reference = json.loads((REFERENCE / "ws-training-progress.json").read_text())
    api = server.client()
    ws = WSCollector(ws_server.ws_url)
    try:
        created = api.post("/sessions", json=reference_session())
        assert created.status_code == 201, created.text
        session = created.json()
        sid = session["id"]
        assert session["modelSize"] == "debug" and session["strategy"] == "ddp"
        ws.send({"action": "subscribe", "sessionId": sid, "after": 0})
        wait_until(lambda: ws.of("subscribed"), 10, "the subscription acknowledgement")

        status = wait_until(
            lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s, 240,
            "the session to finish",
        )
        last_logs = api.get(f"/sessions/{sid}/logs").json()["lines"][-20:]
        assert status["status"] == "completed", (status["error"], last_logs)

        progress = wait_until(lambda: ws.of("training.progress"), 10, "training.progress messages")
        for message in progress:
            assert_reference_shape(message, reference)
            assert message["data"]["sessionId"] == sid
            assert 0 <= message["data"]["progress"] <= 100
            assert message["data"]["metrics"]["batchSize"] == 8
        assert len(progress) >= 15  # 40 steps, one event every 2

        # every message this session produced reached the client, in order, exactly once
        wait_until(lambda: ws.of("training.status") and ws.of("training.status")[-1]["data"]["status"] == "completed",
                   10, "the completed status message")
        seqs = [m["data"]["seq"] for m in ws.messages if m["data"].get("sessionId") == sid and "seq" in m["data"]
                and m["event"] != "subscribed"]
        assert seqs == list(range(1, len(seqs) + 1))
        assert {m["event"] for m in ws.messages} >= {"training.status", "training.progress", "training.checkpoint",
                                                     "training.eval"}

        models = api.get("/models", params={"session": sid}).json()
        assert [m["name"] for m in models] == ["v1"]
        assert models[0]["metrics"]["val_loss"] > 0 and models[0]["metrics"]["num_parameters"] > 0
        assert api.get(f"/sessions/{sid}/checkpoints").json()
        history = api.get(f"/sessions/{sid}/metrics", params={"maxPoints": 10}).json()
        assert history["downsampled"] and len(history["points"]) <= 10 and history["totalPoints"] >= 20
        toml = api.get(f"/sessions/{sid}/config")
        assert toml.status_code == 200 and f'id = "{sid}"' in toml.text

        # a reconnecting client asks for what it missed after seq 5 and gets exactly that
        late = WSCollector(ws_server.ws_url)
        late.send({"action": "subscribe", "sessionId": sid, "after": 5})
        wait_until(lambda: len(late.messages) >= len(seqs) - 5 + 1, 10, "the replay")
        replayed = [m["data"]["seq"] for m in late.messages if m["event"] != "subscribed"]
        assert replayed == list(range(6, len(seqs) + 1))
        late.close()
        return sid
    finally:
        ws.close()


def test_reference_session_trains_streams_progress_and_versions_its_model(servers):
    server = servers()
    sid = run_reference_session(server)

    # running it again (it resumes from its checkpoints) makes v2; compare and download
    api = server.client()
    assert api.post(f"/sessions/{sid}/start").json()["status"] == "queued"
    wait_until(lambda: len(api.get("/models", params={"session": sid}).json()) == 2, 240, "the second version")
    v1, v2 = api.get("/models", params={"session": sid}).json()
    assert (v1["name"], v2["name"]) == ("v1", "v2")
    compared = api.get("/models/compare", params={"ids": [v1["id"], v2["id"]]}).json()
    assert [row["version"] for row in compared["versions"]] == ["v1", "v2"]
    for key in ("val_loss", "val_perplexity", "val_accuracy", "num_parameters", "tokens_seen"):
        assert compared["versions"][0][key] is not None, key
    assert compared["best"]["val_loss"] in (v1["id"], v2["id"])
    assert api.get("/models/compare", params={"ids": [v1["id"]]}).status_code == 422
    download = api.get(f"/models/{v2['id']}/download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert f"{sid}-v2/metrics.json" in names and any(n.endswith(".safetensors") for n in names)


def test_one_slot_runs_the_higher_priority_first_then_the_next(servers):
    """On a CPU machine with one slot, two sessions never run at once; while one runs, the queue
    orders the others by priority, and the next starts when the running one ends."""
    server = servers(COTRAIN_CPU_SLOTS="1")
    api = server.client()

    def tiny(priority: int) -> str:
        body = reference_session(priority=priority)
        body["trainingConfig"].update(maxSteps=4, evalInterval=4, logInterval=1)
        return api.post("/sessions", json=body).json()["id"]

    running = tiny(0)
    wait_until(lambda: api.get(f"/sessions/{running}").json()["status"] == "running", 60, "the first run")
    low, high = tiny(0), tiny(5)
    ids = (running, low, high)
    wait_until(lambda: all(api.get(f"/sessions/{s}").json()["status"] == "completed" for s in ids), 240, "all runs")
    first, second, third = (api.get(f"/sessions/{s}").json() for s in (running, high, low))
    assert first["finishedAt"] <= second["startedAt"] < third["startedAt"]
    assert second["finishedAt"] <= third["startedAt"]


def test_a_two_process_ddp_session_runs_under_torchrun(servers, cotrain_home):
    """A session asking for 2 processes on one node (CPU: gloo) is launched under torchrun by
    the executor; both ranks train and progress reports 2 participants."""
    server = servers()
    api = server.client()
    body = reference_session()
    body["distributedConfig"].update(gpusPerNode=2)
    body["trainingConfig"].update(maxSteps=12, evalInterval=12, logInterval=2)
    sid = api.post("/sessions", json=body).json()["id"]
    status = wait_until(
        lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s, 240,
        "the DDP session to finish",
    )
    last_logs = api.get(f"/sessions/{sid}/logs").json()["lines"][-20:]
    assert status["status"] == "completed", (status["error"], last_logs)
    events_file = cotrain_home / "logs" / "training" / sid / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    started = next(e for e in events if e["type"] == "started")
    assert started["world_size"] == 2
    assert {e["participants"] for e in events if e["type"] == "progress"} == {2}
