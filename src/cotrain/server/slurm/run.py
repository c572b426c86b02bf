"""A session's Slurm job as the executor follows it: the same duck type as processes.ChildRun
(`returncode`, `wait(timeout)`, `signal(sig)`), read from `scontrol show job` at most every POLL_S,
plus what only a job has: why it is pending (the session's waiting reason) and how Slurm ended it.

A DiLoCo session's run is its engine's job (whose state is the run's) plus its other peers' jobs
(`peer_jobs`, launcher.py): SIGKILL (`scancel`) goes to all of them; SIGTERM to the engine's job, and
once that job has ended the peers' jobs get theirs (their batch scripts also stop them on their own once
the engine's job has ended, script.py).

Also the jobs a Slurm worker submitted, on its own disk (as run_ledger.py keeps a local worker's
engines): a worker that comes back after its sessions moved to other workers cancels its old jobs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from cotrain.core.events import read_status
from cotrain.server.run_ledger import WorkerLedger
from cotrain.server.slurm.jobs import JobState, SlurmError, cancel, job_state
from cotrain.server.slurm.script import STOP_SIGNAL

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a job's state is asked of slurmctld
EXIT_REFUSED = 2  # the executor's "bad config" exit code: a job Slurm refuses fails without retries
# the states a job ends in normally: the engine's own exit code and error line say what happened
PLAIN_ENDS = ("COMPLETED", "FAILED")
# sbatch errors that say the cluster was out of reach, not that the job is wrong: retried
TRANSIENT = ("unable to contact", "timed out", "temporarily unavailable", "try again", "connection refused",
             "socket", "slurm_persist_conn")
# Slurm's pending reasons that need a word of explanation
REASONS = {
    "Resources": "waiting for free nodes",
    "Priority": "jobs with a higher priority go first",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "JobHeldAdmin": "held by an administrator (`scontrol release`)",
    "JobHeldUser": "held (`scontrol release`)",
    "BeginTime": "its start time has not come",
    "Dependency": "waiting for another job",
}


def pending_sentence(state: JobState) -> str:
    """"Waiting for Slurm: job 12 is pending (Resources: waiting for free nodes)."""
    reason = state.reason or "no reason given yet"
    key = reason.split(",")[0].split("(")[0].strip()
    if key in REASONS:
        reason = f"{reason}: {REASONS[key]}"
    return f"Waiting for Slurm: job {state.job_id} is pending ({reason})."


def end_sentence(state: JobState) -> str | None:
    """How Slurm ended a job, when that says more than the engine's own exit (a cancel from outside, a time
    limit, a preemption, a node failure); None for a plain COMPLETED or FAILED."""
    if state.state in PLAIN_ENDS:
        return None
    if state.state == "UNKNOWN":
        return f"Slurm no longer knows job {state.job_id} (it ended while nobody followed it)"
    text = f"Slurm ended job {state.job_id} as {state.state}"
    if state.signal:
        text += f" (signal {state.signal})"
    elif state.exit_code:
        text += f" (exit code {state.exit_code})"
    if state.nodes:
        text += f" on {','.join(state.nodes)}"
    if state.reason:
        text += f": {state.reason}"
    return text


class SlurmRun:
    """One submitted job; `pid` is None (there is no process of this machine to signal)."""

    pid: int | None = None

    def __init__(self, job_id: str, session_dir: Path, config_path: str, peer_jobs: tuple[str, ...] = ()):
        self.job_id = job_id
        self.peer_jobs = peer_jobs  # a DiLoCo session's other peers' jobs
        self._peers_stopped = False
        self.session_dir = session_dir
        self.config_path = config_path
        self.state: JobState | None = None
        self._asked_at = 0.0
        self._shown: tuple[bool, str | None] | None = None  # what `changed` last reported
        self._refusal: str | None = None  # sbatch's refusal, for a job that never was

    @classmethod
    def refused(cls, error: SlurmError, session_dir: Path, config_path: str) -> SlurmRun:
        """A job sbatch did not take: it 'ends' at once, with Slurm's sentence as the run's error; one the
        controller could not be reached for is retried, one it refused (a partition, account or QoS that does
        not exist, more nodes than there are) fails."""
        run = cls("", session_dir, config_path)
        transient = any(word in str(error).lower() for word in TRANSIENT)
        run.state = JobState(job_id="", state="REFUSED", reason=None, exit_code=1 if transient else EXIT_REFUSED,
                             signal=None, nodes=())
        run._refusal = f"Slurm did not accept the job: {error}"
        return run

    # ---- the ChildRun duck type -------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        state = self.state
        if state is None or not state.finished and state.state != "REFUSED":
            return None
        if state.state == "UNKNOWN":  # the engine's own last word, as for an adopted local run
            ended = (read_status(self.session_dir) or {}).get("state")
            return {"completed": 0, "failed": 1, "interrupted": 143}.get(ended or "", -signal.SIGKILL)
        if state.state == "COMPLETED":
            return state.exit_code or 0
        if state.exit_code:
            return state.exit_code
        return 128 + state.signal if state.signal else 1

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        if self.job_id and time.monotonic() - self._asked_at >= POLL_S:
            await self.refresh()

    def signal(self, sig: int) -> None:
        """SIGTERM: `scancel --signal=USR1` to the job's step (script.py: the engine alone gets a SIGTERM and
        saves a checkpoint; a pending job
        is just cancelled); SIGKILL: `scancel`. Others (SIGCONT for a hung run) mean nothing to a job."""
        if not self.job_id or sig not in (signal.SIGTERM, signal.SIGKILL):
            return
        # a DiLoCo session's peers get their SIGTERM once the engine has stopped (`refresh`): until then they
        # finish the round the engine may be in, so it saves its checkpoint within the grace period
        for job_id in (self.job_id, *(self.peer_jobs if sig == signal.SIGKILL else ())):
            _signal_job(job_id, sig)

    # ---- what only a job has ------------------------------------------------------------------
    async def refresh(self) -> None:
        self._asked_at = time.monotonic()
        try:
            self.state = await asyncio.to_thread(job_state, self.job_id)
        except SlurmError as exc:  # slurmctld away for a moment: the last state stands, asked again soon
            log.warning("reading the state of Slurm job %s failed: %s", self.job_id, exc)
        if self.peer_jobs and not self._peers_stopped and self.state is not None and self.state.finished:
            self._peers_stopped = True  # the session's run has ended: its peers save a checkpoint and stop
            await asyncio.to_thread(self._stop_peers)

    def _stop_peers(self) -> None:
        for job_id in self.peer_jobs:
            _signal_job(job_id, signal.SIGTERM)

    @property
    def pending(self) -> bool:
        """Not started yet (just submitted, or pending in Slurm's queue)."""
        return bool(self.job_id) and (self.state is None or self.state.pending)

    @property
    def waiting(self) -> str | None:
        """Why the job has not started, as the session's waiting reason; None once it runs."""
        if self.state is None or not self.state.pending:
            return None
        return pending_sentence(self.state)

    def changed(self) -> bool:
        """True once each time the job starts or its pending reason changes (and at the first call)."""
        shown = (self.pending, self.waiting)
        if shown == self._shown or self.state is None:
            return False
        self._shown = shown
        return True

    @property
    def ending(self) -> str | None:
        """Why the job ended, when Slurm (not the engine) decided it: the run's error."""
        if self._refusal is not None:
            return self._refusal
        return end_sentence(self.state) if self.state is not None and self.state.finished else None


def _signal_job(job_id: str, sig: int) -> None:
    """SIGTERM: script.STOP_SIGNAL to the job's step (the engine runs in an srun step: a signal for the batch
    script would reach srun too); SIGKILL: `scancel`."""
    try:
        cancel(job_id, STOP_SIGNAL if sig == signal.SIGTERM else None, steps_only=True)
    except SlurmError as exc:
        log.warning("cancelling Slurm job %s failed: %s", job_id, exc)


@dataclass(frozen=True)
class JobEntry:
    session_id: str
    job_id: str  # the session's engine
    attempt: int
    peer_jobs: list[str] = field(default_factory=list)  # a DiLoCo session's other peers


class JobLedger(WorkerLedger[JobEntry]):
    """COTRAIN_HOME/workers/<worker digest>/slurm-jobs/<session id>.json: the jobs this worker submitted."""

    subfolder = "slurm-jobs"
    entry_type = JobEntry

    def end_orphans(self, keep: set[str]) -> list[JobEntry]:
        """`scancel` every listed job still known to Slurm whose session is not in `keep` (re-attached), its
        DiLoCo peers' jobs too; forget those entries. Returns the sessions' entries whose engine job was cancelled."""
        cancelled = []
        for entry in self.entries():
            if entry.session_id in keep:
                continue
            try:
                for peer in entry.peer_jobs:
                    if not job_state(peer).finished:
                        cancel(peer)
                if not job_state(entry.job_id).finished:
                    cancel(entry.job_id)
                    cancelled.append(entry)
            except SlurmError as exc:
                log.warning("cancelling the orphaned Slurm job %s failed: %s", entry.job_id, exc)
                continue  # kept: tried again at the next restart
            self.forget(entry.session_id)
        return cancelled
