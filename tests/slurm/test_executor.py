"""Sessions run as jobs of a real Slurm cluster (tests/slurm/cluster.py: two nodes n1 and n2 on this
host): a `cotrain worker --executor slurm` (or the embedded executor with COTRAIN_EXECUTOR=slurm)
submits each session with sbatch and follows it with scontrol; COTRAIN_HOME is shared (one disk)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from cotrain.server.slurm.jobs import cancel, job_state
from tests.server.conftest import reference_session, server_env, servers, wait_until  # noqa: F401 (fixtures)
from tests.slurm.cluster import SlurmCluster

pytestmark = pytest.mark.slow

SLURM = {"COTRAIN_EXECUTOR": "slurm", "COTRAIN_SLURM_GPUS": "0", "COTRAIN_CANCEL_GRACE": "20"}
FINAL = ("completed", "failed", "cancelled")


def session(api: httpx.Client, sid: str) -> dict[str, Any]:
    return api.get(f"/sessions/{sid}").json()


def finished(api: httpx.Client, sid: str, timeout: float) -> dict[str, Any]:
    return wait_until(lambda: (s := session(api, sid))["status"] in FINAL and s, timeout, f"session {sid} to end")


def job_of(home: Path, sid: str) -> str:
    """The id of the (last) Slurm job the session ran as, from its stdout (the worker's own line)."""
    jobs = re.findall(r"submitted as Slurm job (\d+)", (home / "logs" / "training" / sid / "stdout.log").read_text())
    assert jobs, f"session {sid} was never submitted to Slurm"
    return jobs[-1]


def completed_jobs(cluster: SlurmCluster) -> str:
    """The cluster's job-completion log (jobcomp/filetxt): one line per job that ended."""
    path = cluster.folder / "jobcomp.txt"
    return path.read_text() if path.exists() else ""


def test_a_session_runs_as_a_slurm_job_of_a_cotrain_worker(slurm_cluster, servers, cotrain_home):  # noqa: F811
    api = servers(COTRAIN_EMBEDDED_WORKER="0").client()
    servers("worker", **SLURM)
    sid = api.post("/sessions", json=reference_session(name="on slurm")).json()["id"]
    done = finished(api, sid, 300)
    assert done["status"] == "completed", done["error"]
    assert done["step"] == 40 and done["loss"] is not None and done["waitingReason"] is None
    job = job_of(cotrain_home, sid)
    assert re.search(rf"Slurm job {job} runs on n[12]\b", (cotrain_home / "logs" / "training" / sid / "stdout.log")
                     .read_text())
    assert f"JobId={job} " in completed_jobs(slurm_cluster) and f"cotrain-{sid}" in completed_jobs(slurm_cluster)
    assert api.get(f"/sessions/{sid}/checkpoints").json()


def test_a_two_node_ddp_session_is_one_job_across_both_nodes(slurm_cluster, servers, cotrain_home):  # noqa: F811
    api = servers(COTRAIN_EMBEDDED_WORKER="0").client()
    slurm_worker = servers("worker", **SLURM)
    body = reference_session(name="two nodes")
    body["distributedConfig"].update(nodes=2, gpusPerNode=1, strategy="ddp")
    sid = api.post("/sessions", json=body).json()["id"]
    done = finished(api, sid, 400)
    assert done["status"] == "completed", done["error"]
    assert done["step"] == 40 and done["loss"] is not None
    job = job_of(cotrain_home, sid)
    assert f"Slurm job {job} runs on n[1-2]" in (cotrain_home / "logs" / "training" / sid / "stdout.log").read_text()
    assert re.search(rf"JobId={job} .*NodeList=n\[1-2\]", completed_jobs(slurm_cluster))

    # the same session on the local executor (two processes of one machine) ends with the same loss
    slurm_worker.stop()
    servers("worker", COTRAIN_WORKER_ID="local-box")
    local = finished(api, api.post("/sessions", json=body).json()["id"], 400)
    assert local["status"] == "completed", local["error"]
    assert "Slurm" not in (cotrain_home / "logs" / "training" / local["id"] / "stdout.log").read_text()
    assert local["loss"] == pytest.approx(done["loss"], rel=1e-5)


def test_a_partition_that_does_not_exist_fails_with_slurms_reason(slurm_cluster, servers):  # noqa: F811
    api = servers(**SLURM, COTRAIN_SLURM_PARTITION="nowhere").client()
    sid = api.post("/sessions", json=reference_session(name="lost")).json()["id"]
    done = finished(api, sid, 60)
    assert done["status"] == "failed" and done["attempts"] == 1  # refused: not retried
    assert done["error"].startswith("Slurm did not accept the job:") and "Invalid partition" in done["error"]
    assert "\n" not in done["error"] and "Traceback" not in done["error"]


def test_a_pending_job_shows_slurms_reason_and_cancel_removes_it(slurm_cluster, servers, cotrain_home):  # noqa: F811
    api = servers(**SLURM, COTRAIN_SLURM_EXTRA_SBATCH="--hold").client()
    sid = api.post("/sessions", json=reference_session(name="held")).json()["id"]
    held = wait_until(lambda: (s := session(api, sid))["waitingReason"] and s, 60, "Slurm's pending reason")
    job = job_of(cotrain_home, sid)
    assert held["status"] == "starting"
    assert held["waitingReason"].startswith(f"Waiting for Slurm: job {job} is pending (JobHeldUser")
    assert api.get(f"/sessions/{sid}/status").json()["waitingReason"] == held["waitingReason"]
    api.post(f"/sessions/{sid}/cancel")
    done = finished(api, sid, 60)
    assert done["status"] == "cancelled" and done["waitingReason"] is None
    assert job_state(job).finished


def test_cancel_stops_the_running_job_with_a_checkpoint(slurm_cluster, servers, cotrain_home):  # noqa: F811
    api = servers(**SLURM).client()
    body = reference_session(name="long")
    body["trainingConfig"]["maxSteps"] = 4000
    sid = api.post("/sessions", json=body).json()["id"]
    wait_until(lambda: session(api, sid)["step"] >= 4, 180, "the job to train")
    job = job_of(cotrain_home, sid)
    assert session(api, sid)["status"] == "running"
    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelling"
    done = finished(api, sid, 90)
    assert done["status"] == "cancelled"
    assert job_state(job).finished
    assert api.get(f"/sessions/{sid}/checkpoints").json()  # the engine saved one on SIGTERM
    stderr = (cotrain_home / "logs" / "training" / sid / "stderr.log").read_text()
    assert "SIGKILL" not in stderr  # it stopped within the grace period


def events(api: httpx.Client, sid: str, name: str) -> list[dict[str, Any]]:
    return [m for m in api.get(f"/sessions/{sid}/events").json() if m["event"] == name]


def long_session(steps: int, name: str) -> dict[str, Any]:
    body = reference_session(name=name)
    body["trainingConfig"]["maxSteps"] = steps
    return body


def test_a_job_scancelled_from_outside_is_retried_and_resumes(slurm_cluster, servers, cotrain_home):  # noqa: F811
    api = servers(**SLURM).client()
    sid = api.post("/sessions", json=long_session(60, "scancelled")).json()["id"]
    wait_until(lambda: events(api, sid, "training.checkpoint"), 180, "the first checkpoint")
    job = job_of(cotrain_home, sid)
    cancel(job)  # as an admin would: plain scancel
    done = finished(api, sid, 300)
    assert done["status"] == "completed", done["error"]
    assert done["attempts"] == 2 and job_of(cotrain_home, sid) != job
    statuses = [m["data"] for m in events(api, sid, "training.status")]
    retry = next(s for s in statuses if s["status"] == "queued" and s.get("error"))
    assert f"Slurm ended job {job} as CANCELLED" in retry["error"] and "Retrying" in retry["error"]
    resumed = [s for s in statuses if s.get("resumedFrom")]
    assert resumed and "step-" in resumed[-1]["resumedFrom"]


def test_a_restarted_worker_reattaches_to_its_job(slurm_cluster, servers, cotrain_home):  # noqa: F811
    api = servers(COTRAIN_EMBEDDED_WORKER="0").client()
    worker = servers("worker", **SLURM, COTRAIN_WORKER_ID="slurm-login-1")
    sid = api.post("/sessions", json=long_session(80, "outlives its worker")).json()["id"]
    wait_until(lambda: events(api, sid, "training.checkpoint"), 180, "the first checkpoint")
    job = job_of(cotrain_home, sid)
    worker.stop(signal.SIGKILL)
    assert job_state(job).state == "RUNNING"  # the job does not depend on the worker

    again = servers("worker", **SLURM, COTRAIN_WORKER_ID="slurm-login-1")
    done = finished(api, sid, 300)
    assert done["status"] == "completed", done["error"]
    assert done["attempts"] == 1 and job_of(cotrain_home, sid) == job  # re-attached, not submitted again
    assert f"re-attaching to session {sid} (Slurm job {job})" in again.log_path.read_text()
    steps = [m["data"]["step"] for m in events(api, sid, "training.progress")]
    assert steps == list(range(2, 81, 2))  # every progress event, none lost while no worker followed it


def test_the_job_of_a_lost_worker_is_cancelled_and_its_session_runs_again(slurm_cluster, servers,  # noqa: F811
                                                                            cotrain_home):
    fast = {**SLURM, "COTRAIN_HEARTBEAT_TIMEOUT": "8"}
    api = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_HEARTBEAT_TIMEOUT="8").client()
    lost = servers("worker", **fast, COTRAIN_WORKER_ID="login-a")
    sid = api.post("/sessions", json=long_session(60, "lost worker")).json()["id"]
    wait_until(lambda: events(api, sid, "training.checkpoint"), 180, "the first checkpoint")
    job = job_of(cotrain_home, sid)
    lost.stop(signal.SIGKILL)
    # suspended, the lost worker's job is still there when the next worker takes over, however fast this machine
    # trains (unsuspended, a 60-step run could finish within the heartbeat timeout, leaving nothing to cancel)
    subprocess.run(["scontrol", "suspend", job], check=True, capture_output=True, timeout=30)

    servers("worker", **fast, COTRAIN_WORKER_ID="login-b")
    done = finished(api, sid, 300)
    assert done["status"] == "completed", done["error"]
    assert job_of(cotrain_home, sid) != job  # one job at a time: the lost worker's was cancelled
    assert re.search(rf"JobId={job} .*JobState=CANCELLED", completed_jobs(slurm_cluster))
    statuses = [m["data"] for m in events(api, sid, "training.status")]
    assert any("Worker login-a stopped responding" in (s.get("error") or "") for s in statuses)
    assert [s for s in statuses if s.get("resumedFrom")]


def test_cotrain_worker_refuses_an_unknown_executor(tmp_path):
    result = subprocess.run([str(Path(sys.executable).with_name("cotrain")), "worker", "--executor", "kubernetes"],
                            capture_output=True, text=True, timeout=60, env={"COTRAIN_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "--executor 'kubernetes' is not an executor; use local or slurm." in result.stderr
