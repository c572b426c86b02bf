"""Cancel of a run that cannot honour SIGTERM (stopped with SIGSTOP, like an engine hung in a
collective): after COTRAIN_CANCEL_GRACE the executor kills its whole process group, the session
ends cancelled, the logs say why, and a retry resumes from the last checkpoint."""

from __future__ import annotations

import os
import signal

import pytest

from cotrain.server.processes import group_processes
from tests.server.conftest import engine_pids, reference_session, wait_until

pytestmark = pytest.mark.slow


def messages(api, sid, event):
    stream = api.get(f"/sessions/{sid}/events", params={"limit": 10000}).json()
    return [m["data"] for m in stream if m["event"] == event]


def final(api, sid):
    session = api.get(f"/sessions/{sid}").json()
    return session if session["status"] in ("completed", "failed", "cancelled") else None


def test_engine_that_ignores_sigterm_is_killed_and_can_be_retried(servers, cotrain_home):
    server = servers(COTRAIN_CANCEL_GRACE="2")
    api = server.client()
    body = reference_session()
    body["trainingConfig"]["maxSteps"] = 5000
    sid = api.post("/sessions", json=body).json()["id"]
    wait_until(lambda: messages(api, sid, "training.checkpoint"), 180, "the first checkpoint")
    [pid] = engine_pids(cotrain_home)
    os.kill(pid, signal.SIGSTOP)  # hung: SIGTERM stays pending, no checkpoint on the way out
    stopped = wait_until(lambda: [s for p, s in group_processes(pid) if p == pid and s == "T"], 30,
                         "the engine to stop")
    assert stopped

    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelling"
    session = wait_until(lambda: final(api, sid), 60, "the cancel to escalate to SIGKILL")
    assert session["status"] == "cancelled" and session["error"] is None
    assert group_processes(pid) == []  # the whole group is gone: no zombie, no orphaned rank
    assert not engine_pids(cotrain_home)

    last = messages(api, sid, "training.status")[-1]
    assert last["status"] == "cancelled" and last["exitCode"] == -signal.SIGKILL
    assert "SIGKILL" in last["detail"] and "2 s" in last["detail"]
    tail = api.get(f"/sessions/{sid}/logs", params={"stream": "stderr"}).json()
    assert any("SIGKILL" in line for line in tail["lines"])
    assert f"session {sid} ignored SIGTERM" in server.log_path.read_text()

    # the run that was killed left no checkpoint of its own; the retry resumes from the last one
    last_checkpoint = max(api.get(f"/sessions/{sid}/checkpoints").json(), key=lambda c: c["step"])
    retried = api.post(f"/sessions/{sid}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    resumed = wait_until(
        lambda: [s for s in messages(api, sid, "training.status") if s.get("resumedFrom")], 180, "the retry to start"
    )
    assert resumed[-1]["resumedFrom"] == last_checkpoint["path"]
    assert resumed[-1]["step"] == last_checkpoint["step"]
    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelling"
    assert wait_until(lambda: final(api, sid), 60, "the second cancel")["status"] == "cancelled"
    assert not engine_pids(cotrain_home)
