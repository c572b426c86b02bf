"""cotrain.server.slurm.jobs against the package's real two-node Slurm cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cotrain.server.slurm import jobs
from cotrain.server.slurm.jobs import JobState, SlurmError
from tests.slurm.cluster import SlurmCluster


def wait_job(job_id: str, until: Callable[[JobState], bool], what: str, timeout: float = 30) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = jobs.job_state(job_id)
        if until(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not become {what} in {timeout:.0f} s: {jobs.job_state(job_id)}")


def wait_text(path: Path, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{path} did not show {text!r} in {timeout:.0f} s")


def test_slurm_available(slurm_cluster: SlurmCluster) -> None:
    assert jobs.slurm_available() is None


def test_two_node_job_runs_a_step_on_both_nodes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "job.out"
    script = "#!/bin/bash\necho \"greeting=$COTRAIN_GREETING\"\nsrun hostname\n"
    job_id = jobs.submit(script, workdir=tmp_path, job_name="two-nodes", output=output,
                         env={"COTRAIN_GREETING": "hello"}, sbatch_args=["--nodes=2", "--ntasks-per-node=1"])
    state = wait_job(job_id, lambda s: s.finished, "finished")
    assert (state.state, state.exit_code, state.signal) == ("COMPLETED", 0, None), output.read_text()
    assert state.nodes == ("n1", "n2")
    lines = output.read_text().split()
    assert lines[0] == "greeting=hello"
    assert sorted(lines[1:]) == ["n1", "n2"]


def test_unknown_partition_is_refused_with_slurms_reason(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    with pytest.raises(SlurmError, match="(?i)partition"):
        jobs.submit("#!/bin/bash\ntrue\n", workdir=tmp_path, job_name="nowhere", output=tmp_path / "o",
                    sbatch_args=["--partition=nowhere"])


def test_a_job_that_cannot_run_pends_with_a_reason_and_cancels(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # more nodes than the partition has: Slurm accepts the job and says why it waits
    big = jobs.submit("#!/bin/bash\ntrue\n", workdir=tmp_path, job_name="big", output=tmp_path / "big.out",
                      sbatch_args=["--nodes=3"])
    held = jobs.submit("#!/bin/bash\ntrue\n", workdir=tmp_path, job_name="held", output=tmp_path / "held.out",
                       sbatch_args=["--hold"])
    state = wait_job(big, lambda s: s.reason is not None, "pending with a reason")
    assert state.pending and not state.finished and state.reason == "PartitionConfig"
    assert state.exit_code is None and state.nodes == ()
    assert jobs.job_state(held).reason == "JobHeldUser"
    jobs.cancel(big, signal="TERM")  # nothing runs yet: the job is cancelled
    jobs.cancel(held)
    for job_id in (big, held):
        assert wait_job(job_id, lambda s: s.finished, "cancelled").state in ("CANCELLED", jobs.UNKNOWN)


def test_term_reaches_the_batch_scripts_trap(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "trap.out"
    script = "#!/bin/bash\ntrap 'echo caught TERM; exit 7' TERM\necho started\nsleep 300 &\nwait\n"
    job_id = jobs.submit(script, workdir=tmp_path, job_name="trap", output=output)
    wait_text(output, "started")
    jobs.cancel(job_id, signal="TERM")
    state = wait_job(job_id, lambda s: s.finished, "finished")
    assert "caught TERM" in output.read_text()
    assert state.exit_code == 7
    jobs.cancel(job_id, signal="TERM")  # a finished job: nothing to do, no error
    jobs.cancel(job_id)


def test_requeue_runs_the_script_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "requeue.out"
    job_id = jobs.submit("#!/bin/bash\necho run\nsleep 300\n", workdir=tmp_path, job_name="again", output=output,
                         sbatch_args=["--open-mode=append"])
    wait_text(output, "run")
    jobs.requeue(job_id)
    deadline = time.monotonic() + 30
    while output.read_text().count("run") < 2:
        assert time.monotonic() < deadline, f"the requeued job did not run again: {jobs.job_state(job_id)}"
        time.sleep(0.2)
    assert jobs.job_state(job_id).state == "RUNNING"
    jobs.cancel(job_id)


def test_failing_script_exit_code_then_forgotten(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = jobs.submit("#!/bin/bash\nexit 3\n", workdir=tmp_path, job_name="fails", output=tmp_path / "f.out")
    state = wait_job(job_id, lambda s: s.finished, "finished")
    assert (state.state, state.exit_code, state.signal, state.reason) == ("FAILED", 3, None, "NonZeroExitCode")
    # MinJobAge later slurmctld forgets it (no accounting to ask): the state says so
    forgotten = wait_job(job_id, lambda s: s.state == jobs.UNKNOWN, "forgotten", timeout=60)
    assert forgotten.finished and forgotten.exit_code is None
    assert jobs.job_state("999999").state == jobs.UNKNOWN


def test_errors_are_one_sentence(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SlurmError, match="Invalid job id") as error:
        jobs.requeue("999999")
    assert "\n" not in str(error.value)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    assert "does not exist" in (jobs.slurm_available() or "")
    (tmp_path / "broken.conf").write_text("not a slurm setting\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "broken.conf"))
    reason = jobs.slurm_available()
    assert reason is not None and "scontrol ping" in reason and "\n" not in reason
