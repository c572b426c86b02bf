"""A run that is alive but writes no event (issue 18, "Hung runs").

A real `cotrain up` runs the tiny session; once it has a checkpoint, its engine is stopped with
SIGSTOP: the process lives on and writes nothing, like an engine hung in a collective or on a dead
file system. With COTRAIN_STALL_TIMEOUT=6 the executor must stop it (SIGTERM with SIGCONT, so the
engine saves a checkpoint on the way out; SIGKILL after the grace otherwise), say why in the run's
log and status, and the retry must resume from a checkpoint and complete: every event the engines
wrote stored once by seq, one model version.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from cotrain.server.processes import group_processes
from tests.server.conftest import engine_pids, reference_session, wait_until

pytestmark = pytest.mark.slow

STALL_TIMEOUT_S = 6


def messages(api, sid, event):
    stream = api.get(f"/sessions/{sid}/events", params={"limit": 10000}).json()
    return [m["data"] for m in stream if m["event"] == event]


def test_a_silent_live_run_is_killed_and_retried_from_its_checkpoint(servers, cotrain_home):
    server = servers(COTRAIN_STALL_TIMEOUT=str(STALL_TIMEOUT_S), COTRAIN_CANCEL_GRACE="5")
    api = server.client()
    body = reference_session()
    body["trainingConfig"]["maxSteps"] = 60
    sid = api.post("/sessions", json=body).json()["id"]
    wait_until(lambda: messages(api, sid, "training.checkpoint"), 180, "the first checkpoint")
    [pid] = engine_pids(cotrain_home)
    os.kill(pid, signal.SIGSTOP)  # alive, silent
    hung_at = time.monotonic()
    wait_until(lambda: [s for p, s in group_processes(pid) if p == pid and s == "T"], 30, "the engine to stop")

    wait_until(lambda: not group_processes(pid), 60, "the hung engine to be stopped")
    detected_s = time.monotonic() - hung_at
    print(f"\nhung run: stopped {detected_s:.1f} s after its engine went silent "
          f"(COTRAIN_STALL_TIMEOUT={STALL_TIMEOUT_S})", flush=True)
    assert detected_s < STALL_TIMEOUT_S + 15

    session = wait_until(
        lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s, 240,
        "the retry to complete",
    )
    assert session["status"] == "completed", session["error"]
    assert session["attempts"] == 2

    statuses = messages(api, sid, "training.status")
    [stalled] = [s for s in statuses if "no event for" in (s.get("error") or "")]
    assert stalled["status"] == "queued" and "hung run was killed" in stalled["error"]
    assert "last checkpoint is step" in stalled["error"]
    resumed = [s for s in statuses if s.get("resumedFrom")]
    assert resumed and resumed[-1]["step"] > 0
    stderr = (cotrain_home / "logs" / "training" / sid / "stderr.log").read_text()
    assert "no event for" in stderr and "a retry resumes from the last checkpoint" in stderr

    # every event the two attempts wrote is stored once, in order; one model version
    on_disk = [json.loads(line) for line in (cotrain_home / "logs" / "training" / sid / "events.jsonl").open()]
    seqs = [e["seq"] for e in on_disk]
    assert seqs == list(range(1, len(seqs) + 1))
    written = [(e["step"], round(e["loss"], 6)) for e in on_disk if e["type"] == "progress"]
    stored = [(m["step"], round(m["loss"], 6)) for m in messages(api, sid, "training.progress")]
    assert stored == written
    assert len(api.get("/models", params={"session": sid}).json()) == 1
    assert not engine_pids(cotrain_home)


def test_the_stall_limit_follows_the_runs_own_pace():
    """The default: 1800 s, or 20 × the slowest interval between events; three times that before the
    first event; a set COTRAIN_STALL_TIMEOUT as given; 0: never."""
    from cotrain.server.stall import StallTimer

    timer = StallTimer(None, seq=0, now=0.0)
    assert timer.limit_s() == 3 * 1800  # model build and data preparation come first
    assert not timer.stalled(0, 5000.0) and timer.stalled(0, 5401.0)
    timer = StallTimer(None, seq=0, now=0.0)
    for seq, at in enumerate((100.0, 110.0, 230.0, 240.0), start=1):  # slowest interval: 120 s
        assert not timer.stalled(seq, at)
    assert timer.limit_s() == 20 * 120
    assert not timer.stalled(4, 240.0 + 2400) and timer.stalled(4, 240.0 + 2401)
    fixed = StallTimer(6.0, seq=3, now=0.0)
    assert not fixed.stalled(4, 1.0) and fixed.limit_s() == 6.0 and fixed.stalled(4, 7.5)
    assert StallTimer(0.0, seq=0, now=0.0).limit_s() is None
