"""Failure handling with real processes: kill -9 of the engine (retried, resumes from its
checkpoint), kill -9 of the server mid-run (the restarted server re-attaches; nothing lost),
cancel (SIGTERM, the engine checkpoints), and a run that keeps failing (the user sees the
meaningful line, after the configured retries)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.server.conftest import engine_pids, reference_session, wait_until

pytestmark = pytest.mark.slow


def long_session(steps: int, **changes):
    body = reference_session(**changes)
    body["trainingConfig"]["maxSteps"] = steps
    return body


def finished(api, sid):
    session = api.get(f"/sessions/{sid}").json()
    return session if session["status"] in ("completed", "failed", "cancelled") else None


def events(api, sid, name=None):
    return [m for m in api.get(f"/sessions/{sid}/events").json() if name is None or m["event"] == name]


def first_checkpoint(api, sid):
    return wait_until(lambda: events(api, sid, "training.checkpoint"), 120, "the first checkpoint")


def test_killed_engine_is_retried_and_resumes_from_its_checkpoint(servers, cotrain_home):
    server = servers()
    api = server.client()
    sid = api.post("/sessions", json=long_session(60)).json()["id"]
    first_checkpoint(api, sid)
    [pid] = engine_pids(cotrain_home)
    os.kill(pid, signal.SIGKILL)

    session = wait_until(lambda: finished(api, sid), 240, "the retried session to finish")
    assert session["status"] == "completed", session["error"]
    assert session["attempts"] == 2
    statuses = [m["data"] for m in events(api, sid, "training.status")]
    retry = next(s for s in statuses if s["status"] == "queued" and s.get("error"))
    assert "killed by SIGKILL" in retry["error"] and "Retrying" in retry["error"]
    resumed = [s for s in statuses if s.get("resumedFrom")]
    assert resumed and "step-" in resumed[-1]["resumedFrom"]
    assert [m["name"] for m in api.get("/models", params={"session": sid}).json()] == ["v1"]


def test_server_killed_mid_run_reattaches_and_loses_nothing(servers, cotrain_home):
    server = servers()
    api = server.client()
    sid = api.post("/sessions", json=long_session(80)).json()["id"]
    first_checkpoint(api, sid)
    server.stop(signal.SIGKILL)
    [pid] = engine_pids(cotrain_home)  # the engine outlives the server (its own process group)

    restarted = servers()
    api = restarted.client()
    session = wait_until(lambda: finished(api, sid), 240, "the session to finish after the restart")
    assert session["status"] == "completed", session["error"]
    assert session["attempts"] == 1  # re-attached, not re-run
    assert not os.path.exists(f"/proc/{pid}/cmdline") or pid not in engine_pids(cotrain_home)

    messages = events(api, sid)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    steps = [m["data"]["step"] for m in messages if m["event"] == "training.progress"]
    assert steps == list(range(2, 81, 2))  # every progress event, none lost while the server was down
    history = api.get(f"/sessions/{sid}/metrics", params={"maxPoints": 1000}).json()
    assert [p["step"] for p in history["points"] if p["loss"] is not None] == steps


def test_cancel_stops_the_run_with_a_checkpoint(servers, cotrain_home):
    server = servers()
    api = server.client()
    sid = api.post("/sessions", json=long_session(4000)).json()["id"]
    wait_until(lambda: events(api, sid, "training.progress"), 120, "progress")
    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelling"
    session = wait_until(lambda: finished(api, sid), 60, "the cancel to finish")
    assert session["status"] == "cancelled"
    assert not engine_pids(cotrain_home)
    assert api.get(f"/sessions/{sid}/checkpoints").json()  # the engine saved one on SIGTERM
    again = api.post(f"/sessions/{sid}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_failing_run_is_retried_then_shows_the_meaningful_error(servers):
    server = servers()
    api = server.client()
    body = reference_session(maxRetries=1)
    body["dataConfig"] = {"dataPath": "/nonexistent/corpus.txt", "seqLength": 64, "vocabSize": 512}
    sid = api.post("/sessions", json=body).json()["id"]
    session = wait_until(lambda: finished(api, sid), 180, "the failing session to give up")
    assert session["status"] == "failed"
    error = session["error"]
    assert error and "\n" not in error and "Traceback" not in error and "/nonexistent" in error
    attempts = session["attempts"]
    assert attempts in (1, 2)  # 1 when the engine calls it a bad config (exit 2: no retry), else 1 + 1 retry
    retried = api.post(f"/sessions/{sid}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
