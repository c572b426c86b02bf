"""The thin client of a Slurm cluster: the only module that runs Slurm's commands (sbatch, scontrol,
scancel). It reads Slurm's machine-readable output only (`sbatch --parsable`, `scontrol show job -o`),
needs no accounting database (no sacct), and finds the cluster as Slurm's own commands do (SLURM_CONF
or /etc/slurm/slurm.conf, inherited from the environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

COMMAND_TIMEOUT_S = 30.0

# Slurm's job states after which the job runs no more (as `scontrol show job` spells them)
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "UNKNOWN",
})
# states of a job that waits for (another) allocation
PENDING_STATES = frozenset({
    "PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
})
UNKNOWN = "UNKNOWN"  # slurmctld no longer knows the job: it ended MinJobAge ago, or never existed
_UNKNOWN_JOB = "Invalid job id specified"


class SlurmError(RuntimeError):
    """A Slurm command failed; the message names the command and Slurm's own error line."""


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    reason: str | None
    exit_code: int | None
    signal: int | None
    nodes: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES


def submit(script: str, *, workdir: Path, job_name: str, output: Path, env: Mapping[str, str] | None = None,
           sbatch_args: Sequence[str] = ()) -> str:
    """Submit `script` (a batch script, given on sbatch's stdin) and return the job id. The job runs in
    `workdir`, writes stdout and stderr to `output`, and sees this process's environment plus `env`
    (sbatch exports the submitter's environment)."""
    argv = ["sbatch", "--parsable", f"--job-name={job_name}", f"--chdir={workdir}", f"--output={output}",
            *sbatch_args]
    job_env = dict(os.environ)
    job_env.update(env or {})
    out = _run(argv, stdin=script, env=job_env)
    job_id = out.strip().split(";", 1)[0]  # --parsable prints "id" or "id;cluster"
    if not job_id:
        raise SlurmError("sbatch printed no job id: check the cluster with `scontrol ping`.")
    return job_id


def job_state(job_id: str) -> JobState:
    """The job as slurmctld knows it now; state UNKNOWN once it has been forgotten (MinJobAge)."""
    try:
        out = _run(["scontrol", "show", "job", "--oneliner", job_id])
    except SlurmError as error:
        if _UNKNOWN_JOB in str(error):
            return JobState(job_id, UNKNOWN, None, None, None, ())
        raise
    fields = _job_fields(out, job_id)
    state = fields.get("JobState", UNKNOWN).split(" ", 1)[0] or UNKNOWN
    reason = fields.get("Reason")
    exit_code: int | None = None
    signal: int | None = None
    if state in FINAL_STATES:
        code, _, sig = fields.get("ExitCode", "0:0").partition(":")
        exit_code = int(code) if code.isdigit() else None
        signal = int(sig) if sig.isdigit() and int(sig) != 0 else None
    return JobState(
        job_id=job_id, state=state, reason=None if reason in (None, "", "None") else reason,
        exit_code=exit_code, signal=signal, nodes=_hostnames(fields.get("NodeList", "")),
    )


def cancel(job_id: str, signal: str | None = None, *, steps_only: bool = False) -> None:
    """End the job (`scancel`), or send `signal` (e.g. "TERM") to all its processes, the batch script
    included (`scancel --signal --full`). A pending job has no process to signal: it is cancelled. A job
    that has already finished, or that slurmctld has forgotten, is left as it is. `steps_only`: the signal
    goes to the job's `srun` steps, not the batch script (and the `srun` in it, which would turn a TERM
    into a SIGKILL of its tasks)."""
    if signal is None:
        _run(["scancel", job_id])
        return
    current = job_state(job_id)
    if current.finished:
        return
    if current.pending:
        # scancel --full waits on a job without steps; a pending job has nothing to deliver a signal to
        _run(["scancel", job_id])
        return
    try:
        _run(["scancel", f"--signal={signal}", *([] if steps_only else ["--full"]), job_id])
    except SlurmError:
        if not job_state(job_id).finished:  # it did not merely end in the meantime
            raise


def requeue(job_id: str) -> None:
    """Put a batch job back in the queue (`scontrol requeue`): it runs again from its script's start."""
    _run(["scontrol", "requeue", job_id])


def slurm_available() -> str | None:
    """None when Slurm's commands run and reach slurmctld; else one sentence saying why not."""
    for command in ("sbatch", "scontrol", "scancel"):
        if shutil.which(command) is None:
            return f"{command} is not on PATH: install Slurm's client commands (Debian: slurm-client)."
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # Slurm's commands would retry for a minute
        return f"SLURM_CONF names {conf}, which does not exist: point it at the cluster's slurm.conf."
    try:
        out = _run(["scontrol", "ping"])
    except SlurmError as error:
        return str(error)
    if "UP" not in out:
        return f"slurmctld does not answer ({out.strip() or 'no reply'}): check SLURM_CONF and the controller."
    return None


# ---- helpers


def _run(argv: list[str], *, stdin: str | None = None, env: Mapping[str, str] | None = None) -> str:
    try:
        result = subprocess.run(argv, input=stdin, env=dict(env) if env is not None else None, capture_output=True,
                                text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not installed: install Slurm's client commands (Debian: slurm-client)."
                         ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(argv[:3])}` took over {COMMAND_TIMEOUT_S:.0f} s: is slurmctld up?") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise SlurmError(f"`{' '.join(argv[:2])}` failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result.stdout


def _job_fields(out: str, job_id: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value per job (several for an array); a value may
    hold spaces (a reason, a command), so a word without '=' continues the previous value."""
    lines = [line for line in out.splitlines() if line.strip()]
    line = next((line for line in lines if line.startswith(f"JobId={job_id} ")), lines[0] if lines else "")
    fields: dict[str, str] = {}
    key: str | None = None
    for word in line.split(" "):
        name, sep, value = word.partition("=")
        if sep and name and _key_like(name):
            key = name
            fields[key] = value
        elif key is not None:
            fields[key] += " " + word
    return fields


def _key_like(name: str) -> bool:
    """Whether `name` looks like one of scontrol's keys (JobState, AllocNode:Sid, CPUs/Task, ...)."""
    return name[0].isalpha() and all(ch.isalnum() or ch in ":/_-" for ch in name)


def _hostnames(node_list: str) -> tuple[str, ...]:
    """Expand a Slurm node list (n[1-2],gpu7) into host names; empty or (null): none."""
    if node_list in ("", "(null)", "None"):
        return ()
    if "[" not in node_list:
        return tuple(node_list.split(","))
    return tuple(_run(["scontrol", "show", "hostnames", node_list]).split())
