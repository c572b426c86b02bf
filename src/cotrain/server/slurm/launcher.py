"""What the executor does differently when its runs are Slurm jobs (`COTRAIN_EXECUTOR=slurm`): submit a
session's batch script, re-attach to a job by its id after a restart, and keep the ledger of the jobs
this worker submitted. Following, cancelling, retrying and the session's rows stay the executor's.

What must be shared between the worker and the cluster's nodes: COTRAIN_HOME (the session's config,
its event stream, checkpoints and logs; the job runs with it as its working directory) and this
Python environment at the same path (the job runs `settings.python`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cotrain.server.settings import Settings
from cotrain.server.slurm import jobs
from cotrain.server.slurm.run import JobEntry, JobLedger, SlurmRun
from cotrain.server.slurm.script import batch_script, job_spec, sbatch_options

log = logging.getLogger(__name__)
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a name --export can list (not bash's exported functions)


class SlurmLauncher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.slurm = settings.slurm
        self.ledger = JobLedger(settings.layout.root, settings.worker_id)

    async def submit(self, session_id: str, config_path: Path, env: Mapping[str, str], banner: str) -> SlurmRun:
        """The session's job, submitted; one sbatch refused is a run that ended at once (`SlurmRun.refused`)."""
        from cotrain.config import load_config

        logs = self.settings.layout.session_logs(session_id)
        spec = job_spec(load_config(config_path), config_path, session_id, self.slurm, self.settings.python)
        script = batch_script(spec, sbatch_options(spec, self.slurm, logs / "stderr.log"))
        job_env = {name: value for name, value in env.items() if VARIABLE.fullmatch(name)}  # --export's names
        if "OMP_NUM_THREADS" not in os.environ:  # sized for this machine's cores, not the node's
            job_env.pop("OMP_NUM_THREADS", None)
        logs.mkdir(parents=True, exist_ok=True)
        for stream in ("stdout.log", "stderr.log"):
            _append(logs / stream, banner.rstrip("\n"))
        try:
            # the job gets exactly the run's environment (never the worker's secrets): only these names
            job_id = await asyncio.to_thread(
                jobs.submit, script, workdir=self.settings.layout.root, job_name=spec.job_name,
                output=logs / "stdout.log", env=job_env, sbatch_args=[f"--export={','.join(sorted(job_env))}"])
        except jobs.SlurmError as exc:
            log.warning("session %s: sbatch failed: %s", session_id, exc)
            _append(logs / "stderr.log", f"cotrain: Slurm did not accept the job: {exc}")
            return SlurmRun.refused(exc, logs, str(config_path))
        log.info("session %s: submitted as Slurm job %s (%d node(s))", session_id, job_id, spec.nodes)
        _append(logs / "stdout.log", f"cotrain: submitted as Slurm job {job_id}")
        run = SlurmRun(job_id, logs, str(config_path))
        await run.refresh()
        return run

    def adopt(self, session_id: str, job_id: str, config_path: str) -> SlurmRun:
        """A job submitted before this worker restarted (its state is read at the first wait)."""
        return SlurmRun(job_id, self.settings.layout.session_logs(session_id), config_path)

    def record(self, session_id: str, run: SlurmRun, attempt: int) -> None:
        if run.job_id:
            self.ledger.record(JobEntry(session_id, run.job_id, attempt))

    def forget(self, session_id: str) -> None:
        self.ledger.forget(session_id)

    def cancel_job(self, job_id: str) -> None:
        """`scancel` the job of a session whose worker stopped responding (the session is queued again)."""
        try:
            jobs.cancel(job_id)
        except jobs.SlurmError as exc:
            log.warning("cancelling Slurm job %s of a lost worker failed: %s", job_id, exc)

    def end_orphans(self, keep: set[str]) -> list[JobEntry]:
        return self.ledger.end_orphans(keep)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(line + "\n")
