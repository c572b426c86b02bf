"""What the executor does differently when its runs are Slurm jobs (`COTRAIN_EXECUTOR=slurm`): submit a
session's batch script, re-attach to a job by its id after a restart, and keep the ledger of the jobs
this worker submitted. Following, cancelling, retrying and the session's rows stay the executor's.

A DiLoCo session of `nodes` peers is `nodes` jobs (script.py): the engine's, which the executor follows
(the session's row holds its job id), and one `cotrain join`-equivalent peer job each for the others,
with a COTRAIN_HOME of its own (`peer_home`: its identity, checkpoints, events and logs; the datasets
folder is the shared one) and the same bootstrap peers as the engine (the server's DHT, or the
session's initialPeers). The SlurmRun carries the peers' job ids (and the ledger keeps them), so a
cancel, a retry, a re-attach and an orphan's cancel reach every job; a peer's job also ends itself
once the engine's has ended (a lost worker's engine job cancelled by another worker ends its peers).

What must be shared between the worker and the cluster's nodes: COTRAIN_HOME (the session's config,
its event stream, checkpoints and logs; the job runs with it as its working directory) and this
Python environment at the same path (the job runs `settings.python`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cotrain.server.settings import Settings
from cotrain.server.slurm import jobs
from cotrain.server.slurm.run import JobEntry, JobLedger, SlurmRun
from cotrain.server.slurm.script import (
    INITIAL_PEERS_ENV,
    JobSpec,
    batch_script,
    job_spec,
    peer_options,
    sbatch_options,
)
from cotrain.server.slurm.session_options import session_sbatch_args
from cotrain.server.validator_peer import VALIDATE_ENV, prepare_validator

log = logging.getLogger(__name__)
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a name --export can list (not bash's exported functions)
WALLET_ENV = "COTRAIN_DISTRIBUTED_DILOCO_WALLET"  # the server's own peer works for the owner's wallet; peers do not
VALIDATORS_ENV = "COTRAIN_DISTRIBUTED_DILOCO_VALIDATORS"
PEER_JOB_FILE = "slurm-job"  # in a peer's home: the id of its latest job


def peer_home(session_logs: Path, peer: int) -> Path:
    """The COTRAIN_HOME of a DiLoCo session's peer `peer` (1..nodes-1), under the session's shared folder."""
    return session_logs / "peers" / f"peer{peer}"


class SlurmLauncher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.slurm = settings.slurm
        self.ledger = JobLedger(settings.layout.root, settings.worker_id)

    async def submit(self, session_id: str, config_path: Path, env: Mapping[str, str], banner: str,
                     request: Mapping[str, Any] | None = None) -> SlurmRun:
        """The session's job (a DiLoCo session's engine job, then its peers' jobs), submitted; one sbatch
        refused is a run that ended at once (`SlurmRun.refused`), with any job already submitted cancelled.
        `request`: the session's create body (its own narrowing of the worker's sbatch options)."""
        from cotrain.config import load_config

        logs = self.settings.layout.session_logs(session_id)
        config = load_config(config_path)
        spec = job_spec(config, config_path, session_id, self.slurm, self.settings.python)
        job_env = {name: value for name, value in env.items() if VARIABLE.fullmatch(name)}  # --export's names
        if "OMP_NUM_THREADS" not in os.environ:  # sized for this machine's cores, not the node's
            job_env.pop("OMP_NUM_THREADS", None)
        logs.mkdir(parents=True, exist_ok=True)
        for stream in ("stdout.log", "stderr.log"):
            _append(logs / stream, banner.rstrip("\n"))
        submitted: list[str] = []
        try:
            options = self.sbatch_args(spec, request or {})
            job_id = await self._sbatch(spec, options, job_env, logs, spec.job_name)
            submitted.append(job_id)
            if spec.peers:
                peer_env = await asyncio.to_thread(self._peer_env, config_path, job_env)
                # no server DHT and no initialPeers: the peers join through the engine's printed address
                dht = json.loads(job_env.get(INITIAL_PEERS_ENV) or "[]") or config.distributed.diloco.initial_peers
                engine_log = None if dht else (logs / "stderr.log", banner.strip())
                for peer in range(1, spec.peers + 1):
                    home, previous = await asyncio.to_thread(self._prepare_peer_home, session_id, peer, banner)
                    submitted.append(await self._sbatch(spec, options, {**peer_env, "COTRAIN_HOME": str(home)}, home,
                                                        spec.peer_job_name(peer), follows=job_id, previous=previous,
                                                        engine_log=engine_log))
                    _write_atomic(home / PEER_JOB_FILE, submitted[-1])
                    _append(logs / "stdout.log", f"cotrain: DiLoCo peer {peer} of {spec.peers + 1} is Slurm job "
                                                 f"{submitted[-1]} (its COTRAIN_HOME: {home})")
        except jobs.SlurmError as exc:
            log.warning("session %s: sbatch failed: %s", session_id, exc)
            _append(logs / "stderr.log", f"cotrain: Slurm did not accept the job: {exc}")
            for job in submitted:  # a session runs whole or not at all
                self.cancel_job(job)
            return SlurmRun.refused(exc, logs, str(config_path))
        log.info("session %s: submitted as Slurm job %s (%d node(s)%s)", session_id, job_id, spec.nodes,
                 f", peers' jobs {', '.join(submitted[1:])}" if spec.peers else "")
        _append(logs / "stdout.log", f"cotrain: submitted as Slurm job {job_id}")
        run = SlurmRun(job_id, logs, str(config_path), peer_jobs=tuple(submitted[1:]))
        await run.refresh()
        return run

    def sbatch_args(self, spec: JobSpec, request: Mapping[str, Any]) -> list[str]:
        """The `#SBATCH` options every job of the session shares (the engine's and its DiLoCo peers'): its
        shape, the worker's settings, then the session's own narrowing from `request` (`narrowed`: later
        options win). Each job adds its own stderr file (and a peer its dependency) in `_sbatch`."""
        narrowed = session_sbatch_args(request, self.slurm)  # checked against this worker's (a SlurmError: refused)
        return sbatch_options(spec, self.slurm, narrowed=narrowed)

    async def _sbatch(self, spec: JobSpec, options: list[str], job_env: dict[str, str], logs: Path, job_name: str,
                      follows: str | None = None, previous: str | None = None,
                      engine_log: tuple[Path, str] | None = None) -> str:
        """One job submitted; `logs` gets its stdout.log and stderr.log. The job gets exactly `job_env` (never
        the worker's secrets): only these names are exported. `follows`, `previous`, `engine_log`: a DiLoCo
        peer's engine job, its own earlier job (script.peer_options) and where to find the engine's address."""
        own = [f"--error={logs / 'stderr.log'}", *(peer_options(follows, previous) if follows else [])]
        script = batch_script(spec, [*options, *own], follows=follows, engine_log=engine_log)
        return await asyncio.to_thread(
            jobs.submit, script, workdir=self.settings.layout.root, job_name=job_name, output=logs / "stdout.log",
            env=job_env, sbatch_args=[f"--export={','.join(sorted(job_env))}"])

    def _peer_env(self, config_path: Path, engine_env: Mapping[str, str]) -> dict[str, str]:
        """What a `cotrain join` peer runs with, from the engine's environment: not the owner's wallet (the
        server's own peer's), no validating; it trusts the engine when the engine validates, as a volunteer
        does (`GET /sessions/{id}/join`'s validators)."""
        env = {name: value for name, value in engine_env.items() if name not in (WALLET_ENV, VALIDATE_ENV)}
        if engine_env.get(VALIDATE_ENV) == "true":
            env[VALIDATORS_ENV] = json.dumps([prepare_validator(config_path, engine_env)])
        return env

    def _prepare_peer_home(self, session_id: str, peer: int, banner: str) -> tuple[Path, str | None]:
        """The peer's own COTRAIN_HOME (kept across retries: its identity and checkpoints), whose datasets
        folder is the shared home's (prepared once, not per peer); and the peer's job of an earlier attempt
        while Slurm says it has not ended yet (it may still be stopping: the new one waits for it)."""
        home = peer_home(self.settings.layout.session_logs(session_id), peer)
        home.mkdir(parents=True, exist_ok=True)
        datasets, shared = home / "datasets", self.settings.layout.root / "datasets"
        if not datasets.is_symlink() and not datasets.exists():
            shared.mkdir(parents=True, exist_ok=True)
            datasets.symlink_to(shared, target_is_directory=True)
        for stream in ("stdout.log", "stderr.log"):
            _append(home / stream, banner.rstrip("\n"))
        previous = (home / PEER_JOB_FILE).read_text().strip() if (home / PEER_JOB_FILE).is_file() else ""
        try:
            return home, previous if previous and not jobs.job_state(previous).finished else None
        except jobs.SlurmError:  # cannot tell: no dependency (sbatch refuses one on a job it does not know)
            return home, None

    def adopt(self, session_id: str, job_id: str, config_path: str) -> SlurmRun:
        """A job submitted before this worker restarted (its state is read at the first wait), with its DiLoCo
        peers' jobs as the ledger lists them."""
        entry = next((e for e in self.ledger.entries() if e.session_id == session_id and e.job_id == job_id), None)
        peers = tuple(entry.peer_jobs) if entry is not None else ()
        return SlurmRun(job_id, self.settings.layout.session_logs(session_id), config_path, peer_jobs=peers)

    def record(self, session_id: str, run: SlurmRun, attempt: int) -> None:
        if run.job_id:
            self.ledger.record(JobEntry(session_id, run.job_id, attempt, list(run.peer_jobs)))

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


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    temp.replace(path)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(line + "\n")
