"""A maintainer's slurmConfig (issue 15) on the real two-node cluster: the narrowed partition and time
limit reach the job (`scontrol show job`), and a session asking for more than the worker allows fails at
submission with one sentence, never submitted (the server here does not run Slurm, so only the worker
can tell)."""

from __future__ import annotations

import subprocess

import pytest

from cotrain.config.env_settings import EnvSettingsError
from cotrain.server.slurm.session_options import session_sbatch_args, time_seconds
from cotrain.server.slurm.settings import SlurmSettings
from tests.security.conftest import api_token
from tests.server.conftest import reference_session, server_env, servers, wait_until  # noqa: F401 (fixtures)
from tests.slurm.test_executor import FINAL, SLURM, finished, job_of, session

pytestmark = pytest.mark.slow

# the worker's own partition does not exist: only the session's narrowing (which comes later) makes the job run
WORKER = {**SLURM, "COTRAIN_SLURM_PARTITION": "nowhere", "COTRAIN_SLURM_PARTITIONS": "nowhere,debug",
          "COTRAIN_SLURM_TIME_LIMIT": "2:00:00", "COTRAIN_SLURM_EXTRA_SBATCH": "--hold"}


def test_a_maintainers_narrowing_reaches_the_job_and_the_worker_checks_it(slurm_cluster, servers,  # noqa: F811
                                                                        cotrain_home):
    server = servers(COTRAIN_EMBEDDED_WORKER="0")
    servers("worker", **WORKER)
    maintainer = server.client(api_token(server, "maintainer", "ops"))

    body = reference_session(name="narrowed", slurmConfig={"partition": "debug", "timeLimit": "45"})
    sid = maintainer.post("/sessions", json=body).json()["id"]
    held = wait_until(lambda: (s := session(maintainer, sid))["status"] in FINAL or (s["waitingReason"] or "")
                      .startswith("Waiting for Slurm") and s, 60, "the held job's pending reason")
    assert held is not True and held["status"] == "starting", session(maintainer, sid)["error"]
    job = job_of(cotrain_home, sid)
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    assert " Partition=debug " in shown and " TimeLimit=00:45:00 " in shown, shown
    maintainer.post(f"/sessions/{sid}/cancel")
    assert finished(maintainer, sid, 60)["status"] == "cancelled"

    longer = maintainer.post("/sessions", json=reference_session(name="too long", slurmConfig={"timeLimit": "3:00:00"}))
    assert longer.status_code == 201, longer.text  # the server cannot tell: it does not run the Slurm executor
    done = finished(maintainer, longer.json()["id"], 60)
    assert done["status"] == "failed" and done["attempts"] == 1, done  # refused at submission: not retried
    assert "slurmConfig.timeLimit '3:00:00'" in done["error"] and "COTRAIN_SLURM_TIME_LIMIT" in done["error"]
    assert "\n" not in done["error"] and "Traceback" not in done["error"]
    stdout = cotrain_home / "logs" / "training" / longer.json()["id"] / "stdout.log"
    assert "submitted as Slurm job" not in (stdout.read_text() if stdout.exists() else "")


def test_slurm_time_limits_are_read_as_sbatch_reads_them():
    assert [time_seconds(t) for t in ("90", "90:30", "2:00:00", "1-12", "1-12:30", "1-0:0:10")] == [
        5400, 5430, 7200, 129600, 131400, 86410]
    with pytest.raises(EnvSettingsError, match="COTRAIN_SLURM_TIME_LIMIT: '2 hours' is not a Slurm time limit"):
        SlurmSettings(COTRAIN_SLURM_TIME_LIMIT="2 hours")
    assert SlurmSettings(COTRAIN_SLURM_TIME_LIMIT="UNLIMITED").time_limit == "UNLIMITED"
    assert session_sbatch_args({"slurmConfig": {"timeLimit": "99:00:00"}}, SlurmSettings()) == ["--time=99:00:00"]
