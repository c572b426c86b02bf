"""The executor: claims queued sessions, runs the engine as a child process, follows its event
stream into the database and the fan-out, and decides what a finished run means (completed,
retried from its checkpoint with backoff, failed, cancelled).

Runs inside `cotrain up` (embedded) or alone as `cotrain worker` against a shared PostgreSQL.
Children live in their own process group and write their output to files, so they outlive a
server crash; a restarted executor re-attaches to them (`reconcile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.settings import ChainKeySettings
from cotrain.config.memory import fits as fits_machine
from cotrain.core.events import EventFollower
from cotrain.core.path_guard import ENFORCE_ENV
from cotrain.data_roots import ENV as DATA_ROOTS_ENV
from cotrain.data_roots import join_roots
from cotrain.db.retry import OUTAGE, Backoff, is_outage, retry_db
from cotrain.server.capacity import gpus_per_node, need_of_row
from cotrain.server.data_paths import run_roots
from cotrain.server.disk_full import disk_full_sentence  # issue 18: full disks
from cotrain.server.fanout import LocalHub
from cotrain.server.log_tail import TailKeeper, keep_tail
from cotrain.server.messages import status_message
from cotrain.server.model_service import register_model_version
from cotrain.server.monitor import apply_engine_event
from cotrain.server.orm import ACTIVE_STATES, FINAL_STATES, ApiToken, SessionStatus, TrainingSession, Worker
from cotrain.server.processes import AdoptedRun, ChildRun, describe_exit, end_process_group, meaningful_error
from cotrain.server.queue import claim_next
from cotrain.server.run_lease import LostOwnership, RunLease, guard_lease
from cotrain.server.run_ledger import LedgerEntry, RunLedger
from cotrain.server.scheduler import Allocation, ResourcePool
from cotrain.server.settings import TRACKING_ENV_PREFIX, Settings
from cotrain.server.slurm.launcher import SlurmLauncher
from cotrain.server.slurm.run import SlurmRun
from cotrain.server.stall import StallTimer, stall_reason
from cotrain.server.validator_peer import VALIDATE_ENV, is_rewarded_diloco, prepare_validator
from cotrain.server.worker_memory import detect_worker_memory

if TYPE_CHECKING:
    from cotrain.chain.service import ChainService

log = logging.getLogger(__name__)

ENGINE_MODULE = "cotrain.core.train"
EXIT_BAD_CONFIG = 2
# the server's keys, tokens and credentials: a training run (user-controlled config and code) never inherits them
SECRET_ENV = frozenset(Settings.secret_variables() | ChainKeySettings.secret_variables())
CHAIN_TICK_S = 1.0  # how often running DiLoCo sessions' DHT progress records are kept (here and by the server)
HEARTBEAT_S = 1.0  # how often a running session's heartbeat is written (and its cancel flag read)
LOG_TAIL_S = 2.0  # how often a run's log tail is copied into the database (when it changed)
WORKER_BEAT_S = 5.0  # how often the executor refreshes its `workers` row (and looks for stale sessions)
Run = ChildRun | AdoptedRun | SlurmRun  # a run the executor follows: a child, an adopted child, a Slurm job


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a training run inherits of this process's environment: all but the secret variables
    (SECRET_ENV) and COTRAIN_TRACKING_*, the server's tracking defaults, already in the session's config
    (config_generator.with_server_tracking): as engine overrides they would beat the session's own."""
    return {name: value for name, value in environ.items()
            if name not in SECRET_ENV and not name.startswith(TRACKING_ENV_PREFIX)}


class Executor:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        hub: LocalHub,
        bootstrap_peers: Callable[[], list[str]] = list,
        chain: ChainService | None = None,
    ):
        self.settings = settings
        self.factory = factory
        self.hub = hub
        self.bootstrap_peers = bootstrap_peers
        self.chain = chain  # None: no rewards (a remote `cotrain worker`)
        # issue 15: a Slurm executor's runs are jobs (slurm/launcher.py); its slots are the jobs it keeps submitted
        self.slurm = SlurmLauncher(settings) if settings.executor == "slurm" else None
        if self.slurm is not None and settings.slurm.grace_s is not None:
            self.settings = settings = settings.model_copy(update={"cancel_grace_s": settings.slurm.grace_s})
        self.pool = ResourcePool([], settings.slurm.max_jobs) if self.slurm else ResourcePool(
            settings.gpus, settings.cpu_slots)
        self.memory_bytes: int | None = None  # per GPU, or host RAM; measured at start (worker_memory.py)
        self._ram_in_use: dict[str, int] = {}  # CPU worker: session -> the host RAM its run was counted for
        self.runs: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._last_stale_check = 0.0
        self._killed: dict[str, str] = {}  # session -> why its run was SIGKILLed (for its final status)
        self._leases: dict[str, RunLease] = {}  # session -> this worker's ownership of its run (run_lease.py)
        self._stalls: dict[str, str] = {}  # session -> why its hung run was stopped (stall.py)
        self._fences: dict[str, str] = {}  # session -> why this worker stopped a run it could not renew
        self.ledger = RunLedger(settings.layout.root, settings.worker_id)  # the engines it started (run_ledger.py)

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def looping(self) -> bool:
        """True while the claim-and-follow loop runs (health.py: the readiness probe)."""
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        self._wake = asyncio.Event()
        if self.slurm is None:  # a Slurm worker's machine is not where runs go: Slurm decides what fits
            self.memory_bytes = await asyncio.to_thread(
                detect_worker_memory, self.pool.gpus, self.settings.worker_memory)
        await asyncio.to_thread(self._beat_worker)
        await self.reconcile()
        self._loop_task = asyncio.create_task(self._loop(), name="cotrain-executor")

    async def stop(self) -> None:
        """Stop claiming and following. Running engines keep running; the next start re-attaches."""
        tasks = [t for t in (self._loop_task, *self.runs.values()) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):  # a worker that is gone waits for no one
            await asyncio.to_thread(self._forget_worker)

    def wake(self) -> None:
        """Look at the queue now (after a create, start, retry or cancel) instead of within a second."""
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        """Claim and look for stale sessions every second; while the database is away, back off (db/retry.py)."""
        assert self._wake is not None
        backoff = Backoff()
        while True:
            wait_s = 1.0
            try:
                await self._tick()  # may not have needed the database: the outage's end is for retry_db to tell
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("executor tick failed; trying again in a second")
                else:
                    OUTAGE.failed("the executor's queue", exc)
                    wait_s = backoff.next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._wake.clear()

    async def _tick(self) -> None:
        if time.monotonic() - self._last_stale_check > min(WORKER_BEAT_S, self.settings.heartbeat_timeout_s / 3):
            self._last_stale_check = time.monotonic()
            await asyncio.to_thread(self._beat_worker)
            await self._publish(await asyncio.to_thread(self._requeue_stale))
            await self._publish(await asyncio.to_thread(self._requeue_lost_claims, set(self.runs)))
        while self.pool.fits(1):  # room for one more run (a GPU, or a CPU slot), else nothing to claim
            row = await asyncio.to_thread(claim_next, self.factory, self.settings.worker_id, self._fits)
            if row is None:
                return
            self._leases[row.id] = RunLease(row.id, self.settings.worker_id, row.attempts)
            allocation = self.pool.allocate(row.id, gpus_per_node(row))
            assert allocation is not None  # _fits said so, and only this loop allocates
            if not self.pool.gpus:
                self._ram_in_use[row.id] = need_of_row(row).bytes_on(0) or 0
            self.runs[row.id] = asyncio.create_task(self._run(row.id, allocation), name=f"run-{row.id}")

    def _fits(self, row: TrainingSession) -> bool:
        """Free GPUs (or a CPU slot) now, and the memory it needs: never start a run that would be
        OOM-killed. GPUs are never shared; host RAM is, by the runs of a CPU worker's slots."""
        memory = self.memory_bytes
        if memory is not None and not self.pool.gpus:
            memory -= sum(self._ram_in_use.values())
        return (
            row.id not in self.runs
            and fits_machine(need_of_row(row), len(self.pool.gpus), memory)
            and self.pool.fits(gpus_per_node(row))
        )

    # ---- one run ---------------------------------------------------------------------------
    async def _run(self, session_id: str, allocation: Allocation, adopted: AdoptedRun | SlurmRun | None = None) -> None:
        run: Run | None = adopted
        guard: asyncio.Task[None] | None = None
        try:
            run = adopted or await self._spawn(session_id, allocation)
            guard = self._guard(session_id, run)
            returncode = await self._follow(session_id, run)
            ending = run.ending if isinstance(run, SlurmRun) else None  # how Slurm ended a job
            await self._publish(await self._end(session_id, returncode, ending))
            await self._settle(session_id)
        except asyncio.CancelledError:
            raise
        except LostOwnership as lost:
            await self._drop(session_id, run, lost)
        except Exception as exc:
            log.exception("run of session %s failed inside the executor", session_id)
            error = disk_full_sentence(exc, self.settings.layout.root) or f"Executor error: {exc}"  # issue 18
            await self._publish(await retry_db("finishing a run", self._finish, session_id, -1, error))
        finally:
            if guard is not None:
                guard.cancel()
            for reasons in (self._leases, self._stalls, self._fences):
                reasons.pop(session_id, None)
            self._killed.pop(session_id, None)
            self._ram_in_use.pop(session_id, None)
            self.pool.release(session_id)
            self.runs.pop(session_id, None)
            self.wake()

    async def _spawn(self, session_id: str, allocation: Allocation) -> ChildRun | SlurmRun:
        config_path, strategy, request, attempt, wallet = await retry_db("starting a run", self._prepare, session_id)
        session_dir = self.settings.layout.session_logs(session_id)
        session_dir.mkdir(parents=True, exist_ok=True)
        env = self._child_env(allocation, strategy, request, wallet)
        env.update(await retry_db("starting a run", self._data_roots_env, session_id))
        if strategy == "diloco":
            env.update(await self._validator_env(session_id, config_path, env))
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        banner = f"\n=== attempt {attempt} by {self.settings.worker_id} at {at} ===\n"
        if self.slurm is not None:
            job = await self.slurm.submit(session_id, config_path, env, banner, request)
            await self._publish(await retry_db("starting a run", self._mark_started, session_id, None, config_path,
                                               allocation, job.job_id or None))
            return job
        with (session_dir / "stdout.log").open("ab") as out, (session_dir / "stderr.log").open("ab") as err:
            out.write(banner.encode())
            err.write(banner.encode())
            out.flush()
            err.flush()
            proc = await asyncio.create_subprocess_exec(
                *self._engine_command(config_path),
                stdout=out, stderr=err, stdin=asyncio.subprocess.DEVNULL,
                env=env, cwd=str(self.settings.layout.root), start_new_session=True,
            )
        if allocation.cpu_cores:
            # the engine is still starting Python (torch makes its threads much later), so all of
            # them inherit this
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setaffinity(proc.pid, allocation.cpu_cores)
        await self._publish(
            await retry_db("starting a run", self._mark_started, session_id, proc.pid, config_path, allocation))
        return ChildRun(proc)

    def _engine_command(self, config_path: Path) -> list[str]:
        """The engine as one process, or under torchrun when its config asks for several (ddp /
        fsdp with nodes × gpus_per_node > 1, a diloco peer with gpus_per_node > 1); torchrun
        forwards our SIGTERM to every rank, and the ranks die with torchrun if it is SIGKILLed."""
        from cotrain.config import load_config
        from cotrain.core.launch import torchrun_command

        command = torchrun_command(load_config(config_path), config_path, [])
        return command or [self.settings.python, "-m", ENGINE_MODULE, "--config", str(config_path)]

    def _prepare(self, session_id: str) -> tuple[Path, str, dict[str, Any], int, str | None]:
        from cotrain.server.chain_bridge import owner_wallet

        with self.factory.begin() as db:
            row = db.get_one(TrainingSession, session_id)
            owner = db.get(ApiToken, row.owner_id) if row.owner_id is not None else None
            wallet = owner_wallet(owner.name if owner else None)
            return self._local_config(row), row.strategy, row.request, row.attempts, wallet

    def _mark_started(
        self, session_id: str, pid: int | None, config_path: Path, allocation: Allocation, job_id: str | None = None
    ) -> list[dict[str, Any]]:
        with self.factory.begin() as db:
            row = self._hold(db, session_id)
            row.pid, row.job_id = pid, job_id
            row.config_path = str(config_path)
            row.gpu_ids = allocation.cuda_visible_devices or None
            row.error = None
            row.heartbeat_at = time.time()
            row.started_at = row.started_at or time.time()
            if row.status == SessionStatus.STARTING and job_id is None:  # a job: once Slurm starts it
                row.status = SessionStatus.RUNNING
            return [status_message(db, row, pid=pid, gpus=list(allocation.gpu_ids), cpus=list(allocation.cpu_cores))]

    def _config_path(self, session_id: str) -> Path:
        return self.settings.layout.generated_configs / f"{session_id}.toml"

    def _local_config(self, row: TrainingSession) -> Path:
        """This machine's copy of the session's TOML (a remote worker writes it from the DB)."""
        path = self._config_path(row.id)
        if not path.exists() or path.read_text() != row.config_toml:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(row.config_toml)
        return path

    def _child_env(
        self, allocation: Allocation, strategy: str, request: dict[str, Any], wallet: str | None = None
    ) -> dict[str, str]:
        env = inherited_env(os.environ)
        env["COTRAIN_HOME"] = str(self.settings.layout.root)
        env["PYTHONUNBUFFERED"] = "1"
        if self.pool.gpus:
            env["CUDA_VISIBLE_DEVICES"] = allocation.cuda_visible_devices
        if allocation.cpu_cores and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(len(allocation.cpu_cores))
        if strategy == "diloco" and not (request.get("distributedConfig") or {}).get("initialPeers"):
            peers = self.bootstrap_peers()
            if peers:  # the server's DHT is the session's bootstrap peer (a TOML array via env override)
                env["COTRAIN_DISTRIBUTED_DILOCO_INITIAL_PEERS"] = json.dumps(peers)
        if strategy == "diloco" and wallet:
            # the server's own peer works for the wallet that owns the session (its records name it;
            # the owner binds it with its identity file and the owner's key: `cotrain rewards bind`)
            env["COTRAIN_DISTRIBUTED_DILOCO_WALLET"] = json.dumps(wallet)
        return env

    async def _validator_env(self, session_id: str, config_path: Path, env: Mapping[str, str]) -> dict[str, str]:
        """A rewarded DiLoCo session's engine validates its rounds (validator_peer.py): its identity is made
        now and its peer id recorded on the row, for the volunteers' join info. Others: nothing."""
        if not await retry_db("starting a run", self._is_rewarded, session_id):
            return {}
        peer_id = await asyncio.to_thread(prepare_validator, config_path, env)
        await retry_db("starting a run", self._record_validator, session_id, peer_id)
        return {VALIDATE_ENV: "true"}

    def _is_rewarded(self, session_id: str) -> bool:
        with self.factory.begin() as db:
            return is_rewarded_diloco(db, db.get_one(TrainingSession, session_id))

    def _record_validator(self, session_id: str, peer_id: str) -> None:
        with self.factory.begin() as db:
            self._hold(db, session_id).validator_peer_id = peer_id

    def _data_roots_env(self, session_id: str) -> dict[str, str]:
        """The run checks its paths against this worker's data roots (core/path_guard.py), plus
        exactly the path a maintainer or admin approved for this session (server/data_paths.py)."""
        with self.factory.begin() as db:
            approval = db.get_one(TrainingSession, session_id).data_path_approval
        return {ENFORCE_ENV: "1", DATA_ROOTS_ENV: join_roots(run_roots(self.settings, approval))}

    async def _follow(self, session_id: str, run: Run) -> int:
        """Apply the run's events as they come; heartbeat; keep its log tail and (DiLoCo with a chain)
        its peers' progress; honour cancel. Returns the exit code."""
        after, strategy = await retry_db("following a run", self._engine_seq, session_id)
        logs = self.settings.layout.session_logs(session_id)
        follower = EventFollower(logs, after_seq=after)
        tails = TailKeeper(logs)
        heartbeat, tail, capture = _Every(HEARTBEAT_S), _Every(LOG_TAIL_S), _Every(CHAIN_TICK_S)
        captures_progress = strategy == "diloco" and self.chain is not None
        cancel = _Cancel(run, self.settings.cancel_grace_s)
        stall = StallTimer(self.settings.stall_timeout_s, follower.after_seq, time.monotonic())
        while True:
            await self._apply_new_events(session_id, follower)
            returncode = run.returncode
            if returncode is not None:
                await self._wrap_up(session_id, run, follower, tails)
                return returncode
            now = time.monotonic()
            if isinstance(run, SlurmRun) and run.pending:  # waiting in Slurm's queue is not hanging
                stall = StallTimer(self.settings.stall_timeout_s, follower.after_seq, now)
            elif stall.stalled(follower.after_seq, now) and cancel.terminate(now):
                await self._stop_hung(session_id, run, stall.silent_s(now))
            if isinstance(run, SlurmRun) and run.changed():
                await self._publish(await retry_db("following a run", self._job_changed, session_id, run.waiting))
            if heartbeat.due(now) and await retry_db("following a run", self._heartbeat, session_id) \
                    and cancel.terminate(now):
                log.info("cancelling session %s: SIGTERM to pid %s", session_id, run.pid)
            if tail.due(now):
                await self._keep_tails(session_id, tails)
            if captures_progress and capture.due(now):
                await self._capture_progress(session_id)
            if cancel.overdue(now):
                await self._kill(session_id, run)
            await run.wait(self.settings.poll_interval_s)

    async def _apply_new_events(self, session_id: str, follower: EventFollower) -> None:
        """Events read from disk are applied before the follower reads on: while the database is away
        this waits (the run goes on writing to disk), then applies them all by seq, none lost or twice."""
        events = follower.poll()
        if events:
            await self._publish(await retry_db("following a run", self._apply, session_id, events))

    async def _wrap_up(
        self, session_id: str, run: Run, follower: EventFollower, tails: TailKeeper
    ) -> None:
        """The run exited: end what it left behind, apply its last events, keep its last log lines."""
        # ranks left behind by a launcher that died (torchrun killed, a rank hung) share its group
        strays = end_process_group(run.pid) if run.pid is not None else []
        if strays:
            log.warning("session %s: killed %d leftover process(es) of its run: %s", session_id, len(strays), strays)
        await self._apply_new_events(session_id, follower)  # whatever it wrote just before exiting
        await self._keep_tails(session_id, tails)

    async def _kill(self, session_id: str, run: Run) -> None:
        """The run ignored SIGTERM for the grace period: say so in its log, then SIGKILL its group."""
        note = self._kill_note()
        log.warning("session %s ignored SIGTERM for %s: SIGKILL to process group %s", session_id,
                    _seconds(self.settings.cancel_grace_s), run.pid)
        self._killed[session_id] = note
        await asyncio.to_thread(_append_line, self.settings.layout.session_logs(session_id) / "stderr.log", note)
        run.signal(signal.SIGKILL)

    async def _keep_tails(self, session_id: str, tails: TailKeeper) -> None:
        """The run's newest log lines into the database, for API replicas without this machine's disk."""
        try:
            changed = await asyncio.to_thread(tails.changed)
            if changed:
                await retry_db("keeping a run's log tail", self._store_tails, session_id, changed)
        except Exception as exc:  # the log on disk is still whole; the next tick stores it again
            tails.forget()
            log.warning("keeping the log tail of session %s failed: %s", session_id, exc)

    def _store_tails(self, session_id: str, changed: dict[str, list[str]]) -> None:
        with self.factory.begin() as db:
            self._hold(db, session_id)
            for stream, lines in changed.items():
                keep_tail(db, session_id, stream, self.settings.worker_id, lines)

    def _kill_note(self) -> str:
        return (
            f"cotrain: the run did not stop within {_seconds(self.settings.cancel_grace_s)} of SIGTERM, so it was "
            "killed with SIGKILL (no checkpoint was saved on the way out; a retry resumes from the last one)."
        )

    # ---- hung runs and fencing (stall.py, run_lease.py) --------------------------------------
    def _hold(self, db: Session, session_id: str) -> TrainingSession:
        """The session's row for a write of its run: only while this worker still owns the run."""
        lease = self._leases.get(session_id)
        return lease.hold(db) if lease is not None else db.get_one(TrainingSession, session_id)

    async def _stop_hung(self, session_id: str, run: Run, silent_s: float) -> None:
        """The run is alive but silent (SIGTERM was just sent): say why in its log, and let a stopped
        process (SIGSTOP, a debugger) see the SIGTERM; SIGKILL follows after the cancel grace."""
        reason = stall_reason(silent_s, self.settings.layout.session_logs(session_id))
        self._stalls[session_id] = reason
        log.warning("session %s: %s", session_id, reason)
        await asyncio.to_thread(_append_line, self.settings.layout.session_logs(session_id) / "stderr.log",
                                f"cotrain: {reason}; a retry resumes from the last checkpoint.")
        run.signal(signal.SIGCONT)

    def _guard(self, session_id: str, run: Run) -> asyncio.Task[None] | None:
        """Stops the run when this worker cannot renew its lease (cut off from the database)."""
        lease = self._leases.get(session_id)
        if lease is None:
            return None
        if isinstance(run, SlurmRun):
            assert self.slurm is not None
            self.slurm.record(session_id, run, lease.attempt)
        else:
            config_path = run.config_path if isinstance(run, AdoptedRun) else self._config_path(session_id)
            self.ledger.record(LedgerEntry(session_id, run.pid, str(config_path), lease.attempt))

        def fenced(reason: str) -> None:
            self._fences[session_id] = reason
            log.warning("session %s: %s", session_id, reason)
            _append_line(self.settings.layout.session_logs(session_id) / "stderr.log", f"cotrain: {reason}.")

        timeout_s = self.settings.heartbeat_timeout_s
        return asyncio.create_task(guard_lease(lease, run, timeout_s, fenced), name=f"lease-{session_id}")

    async def _end(self, session_id: str, returncode: int, ending: str | None = None) -> list[dict[str, Any]]:
        """The run's end in its row: a run this worker stopped for lack of the database goes back to the
        queue (no retry spent); any other as `_finish` decides, a hung run's reason (or how Slurm ended
        its job: `ending`) as its error."""
        if session_id in self._fences:
            ended = await retry_db("finishing a run", self._release, session_id, self._fences[session_id])
        else:
            stalled = self._stalls.get(session_id) or ending
            ended = await retry_db("finishing a run", self._finish, session_id, returncode, stalled)
        self._forget_run(session_id)
        return ended

    def _forget_run(self, session_id: str) -> None:
        self.ledger.forget(session_id)
        if self.slurm is not None:
            self.slurm.forget(session_id)

    def _release(self, session_id: str, why: str) -> list[dict[str, Any]]:
        with self.factory.begin() as db:
            return [self._requeue(db, self._hold(db, session_id), why[:1].upper() + why[1:])]

    async def _drop(self, session_id: str, run: Run | None, lost: LostOwnership) -> None:
        """Another worker owns the run now: kill this worker's copy (a fenced run must write nothing
        more, not even a checkpoint on the way out) and leave the row to its owner."""
        log.warning("session %s: %s; killing this worker's copy of the run", session_id, lost)
        await asyncio.to_thread(_append_line, self.settings.layout.session_logs(session_id) / "stderr.log",
                                f"cotrain: {lost}, so its copy of the run was killed.")
        if run is None:
            return
        run.signal(signal.SIGKILL)
        while run.returncode is None:
            await run.wait(self.settings.poll_interval_s)
        if run.pid is not None:
            end_process_group(run.pid)
        self._forget_run(session_id)

    async def _end_orphans(self, adopted: set[str]) -> None:
        """Engines this worker started before it was killed whose sessions moved to other workers."""
        ended = [(entry.session_id, f"killed the engine it had left running (pid {entry.pid}, attempt {entry.attempt})")
                 for entry in await asyncio.to_thread(self.ledger.end_orphans, adopted)]
        if self.slurm is not None:  # and the Slurm jobs it had submitted
            ended += [(job.session_id, f"cancelled the Slurm job it had left running (job {job.job_id}, attempt "
                                       f"{job.attempt})")
                      for job in await asyncio.to_thread(self.slurm.end_orphans, adopted)]
        for session_id, what in ended:
            note = (f"cotrain: worker {self.settings.worker_id} came back after its session moved to another worker; "
                    f"it {what}.")
            log.warning("session %s: %s", session_id, note)
            await asyncio.to_thread(_append_line, self.settings.layout.session_logs(session_id) / "stderr.log", note)

    # ---- the chain's hooks (contributions, rewards, payouts) ---------------------------------
    async def _capture_progress(self, session_id: str) -> None:
        assert self.chain is not None
        try:
            await asyncio.to_thread(self.chain.capture_progress, session_id)
        except Exception as exc:  # rewards must never stop training; the next tick tries again
            if is_outage(exc):
                OUTAGE.failed("keeping peers' progress", exc)
            else:
                log.warning("keeping the peers' progress of session %s failed: %s", session_id, exc)

    async def _settle(self, session_id: str) -> None:
        """A completed session: contributions and rewards (from the kept records and a last DHT read),
        then the payouts due, in the background. Inside its challenge window (COTRAIN_CHALLENGE_WINDOW)
        nothing is settled here: the server's chain loop settles it once the window has closed."""
        if self.chain is None:
            return
        try:
            completed, config_toml, finished_at = await retry_db("settling rewards", self._completed_config,
                                                                 session_id)
            if not completed:
                return
            await retry_db("settling rewards", self.chain.capture_progress, session_id)  # the records at its end
            rewarded = await retry_db("settling rewards", self.chain.session_completed, session_id, config_toml,
                                      finished_at)
        except Exception:
            log.exception("settling the rewards of session %s failed; its records are kept", session_id)
            return
        if not rewarded:
            return
        task = asyncio.create_task(self.chain.pay_due(), name=f"pay-{session_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _completed_config(self, session_id: str) -> tuple[bool, str, float]:
        with self.factory.begin() as db:
            row = db.get_one(TrainingSession, session_id)
            return row.status == SessionStatus.COMPLETED, row.config_toml, row.finished_at or time.time()

    # ---- database steps (run in a thread) -------------------------------------------------
    def _engine_seq(self, session_id: str) -> tuple[int, str]:
        with self.factory.begin() as db:
            row = db.get_one(TrainingSession, session_id)
            return row.engine_seq, row.strategy

    def _apply(self, session_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.factory.begin() as db:
            row = self._hold(db, session_id)
            messages: list[dict[str, Any]] = []
            for event in events:
                messages.extend(apply_engine_event(db, row, event, self.chain))
            return messages

    def _job_changed(self, session_id: str, waiting: str | None) -> list[dict[str, Any]]:
        """A Slurm job started (the session runs) or its pending reason changed (the session's waiting reason)."""
        with self.factory.begin() as db:
            row = self._hold(db, session_id)
            row.job_reason = waiting
            if waiting is None and row.status == SessionStatus.STARTING:
                row.status = SessionStatus.RUNNING
            return [status_message(db, row)]

    def _heartbeat(self, session_id: str) -> bool:
        """Renews this worker's lease on the run (run_lease.py); true when a cancel was asked for."""
        asked_at = time.monotonic()
        with self.factory.begin() as db:
            row = self._hold(db, session_id)
            row.heartbeat_at = time.time()
            cancel_requested = row.cancel_requested
        if session_id in self._leases:
            self._leases[session_id].renewed(asked_at)
        return cancel_requested

    def _finish(self, session_id: str, returncode: int, executor_error: str | None = None) -> list[dict[str, Any]]:
        stderr_path = self.settings.layout.session_logs(session_id) / "stderr.log"
        with self.factory.begin() as db:
            row = self._hold(db, session_id)
            if row.status in FINAL_STATES:  # a retry after a commit whose answer the outage cut off
                return []
            row.pid, row.job_id, row.job_reason = None, None, None
            row.heartbeat_at = None
            extra: dict[str, Any] = {"exit_code": returncode}  # StatusData fields
            if row.cancel_requested:
                row.status, row.finished_at, row.error = SessionStatus.CANCELLED, time.time(), None
                if session_id in self._killed:
                    extra["detail"] = self._killed[session_id]
            elif returncode == 0:
                version = register_model_version(db, self.settings.layout, row, self.settings.worker_id)
                row.status, row.finished_at, row.error, row.progress = SessionStatus.COMPLETED, time.time(), None, 100.0
                if version is not None:
                    extra["model_version"] = {
                        "id": version.id, "version": version.version, "name": f"v{version.version}"
                    }
            else:
                error = executor_error or row.error or meaningful_error(stderr_path) or describe_exit(returncode)
                if returncode == EXIT_BAD_CONFIG or row.attempts > row.max_retries:
                    row.status, row.finished_at, row.error = SessionStatus.FAILED, time.time(), error
                else:
                    delay = self.settings.retry_backoff_s * 2 ** max(row.attempts - 1, 0)
                    row.status, row.next_attempt_at = SessionStatus.QUEUED, time.time() + delay
                    row.error = (
                        f"Attempt {row.attempts} failed: {error}. Retrying in {delay:.0f} s "
                        f"from the last checkpoint ({row.max_retries - row.attempts + 1} retries left)."
                    )
                    extra["retry_at"] = row.next_attempt_at
            row.worker_id = None if row.status != SessionStatus.QUEUED else row.worker_id
            return [status_message(db, row, **extra)]

    def _beat_worker(self) -> None:
        """This executor's row in `workers`: what it can run (its GPUs and memory) and that it is alive."""
        try:
            with self.factory.begin() as db:
                row = db.get(Worker, self.settings.worker_id)
                if row is None:
                    row = Worker(id=self.settings.worker_id, started_at=time.time())
                    db.add(row)
                row.gpus, row.cpu_slots = len(self.pool.gpus), self.pool.cpu_slots
                row.memory_bytes = self.memory_bytes
                row.runs, row.heartbeat_at = len(self.runs), time.time()
        except IntegrityError:  # another process with this worker id added the row first: the next beat updates it
            log.warning(
                "worker id %s is used by two processes; give each its own COTRAIN_WORKER_ID", self.settings.worker_id
            )

    def _forget_worker(self) -> None:
        with self.factory.begin() as db:
            db.execute(delete(Worker).where(Worker.id == self.settings.worker_id))

    def _requeue_stale(self) -> list[dict[str, Any]]:
        """Sessions held by a worker that stopped heartbeating go back to the queue."""
        limit = time.time() - self.settings.heartbeat_timeout_s
        messages = []
        with self.factory.begin() as db:
            rows = db.scalars(
                select(TrainingSession)
                .where(
                    TrainingSession.status.in_(ACTIVE_STATES),
                    TrainingSession.worker_id != self.settings.worker_id,
                    TrainingSession.heartbeat_at < limit,
                )
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                if row.job_id and self.slurm is not None:  # its job would train on next to the retry's
                    self.slurm.cancel_job(row.job_id)
                messages.append(self._requeue(db, row, f"Worker {row.worker_id} stopped responding"))
        return messages

    def _requeue_lost_claims(self, running: set[str]) -> list[dict[str, Any]]:
        """Sessions this worker holds but does not run: a claim whose commit went through while a database
        outage cut off its answer (claim_next raised, so no run was started). Back to the queue."""
        with self.factory.begin() as db:
            rows = db.scalars(
                select(TrainingSession)
                .where(
                    TrainingSession.status.in_(ACTIVE_STATES),
                    TrainingSession.worker_id == self.settings.worker_id,
                    TrainingSession.id.not_in(running),
                )
                .with_for_update(skip_locked=True)
            ).all()
            return [self._requeue(db, row, "A database outage cut off this worker's claim") for row in rows]

    def _requeue(self, db: Session, row: TrainingSession, why: str) -> dict[str, Any]:
        if row.cancel_requested:
            row.status, row.finished_at = SessionStatus.CANCELLED, time.time()
        else:
            row.status, row.next_attempt_at = SessionStatus.QUEUED, 0.0
            row.attempts = max(row.attempts - 1, 0)  # not the run's fault: no retry spent
            row.error = f"{why}; the session was queued again and resumes from its last checkpoint."
        row.pid, row.worker_id, row.heartbeat_at = None, None, None
        row.job_id, row.job_reason = None, None
        return status_message(db, row)

    # ---- restart safety --------------------------------------------------------------------
    async def reconcile(self) -> None:
        """Sessions this worker held before it restarted: re-attach to live (or finished) runs,
        re-queue the ones that never started."""
        adopt, messages = await asyncio.to_thread(self._reconcile_rows)
        await self._publish(messages)
        for session_id, pid, job_id, config_path, gpu_ids in adopt:
            allocation = self.pool.adopt(session_id, gpu_ids)
            run = self.slurm.adopt(session_id, job_id, config_path) if job_id and self.slurm else AdoptedRun(
                pid or 0, config_path, self.settings.layout.session_logs(session_id))
            log.info("re-attaching to session %s (%s)", session_id, f"Slurm job {job_id}" if job_id else f"pid {pid}")
            self.runs[session_id] = asyncio.create_task(self._run(session_id, allocation, run))
        await self._end_orphans({session_id for session_id, *_ in adopt})

    def _reconcile_rows(
        self,
    ) -> tuple[list[tuple[str, int | None, str | None, str, tuple[int, ...]]], list[dict[str, Any]]]:
        adopt, messages = [], []
        with self.factory.begin() as db:
            rows = db.scalars(
                select(TrainingSession).where(
                    TrainingSession.status.in_(ACTIVE_STATES), TrainingSession.worker_id == self.settings.worker_id
                )
            ).all()
            for row in rows:
                if row.pid or (row.job_id and self.slurm is not None):
                    self._leases[row.id] = RunLease(row.id, self.settings.worker_id, row.attempts)
                    gpus = tuple(int(i) for i in (row.gpu_ids or "").split(",") if i)
                    adopt.append((row.id, row.pid, row.job_id, row.config_path, gpus))
                    row.heartbeat_at = time.time()
                else:
                    messages.append(self._requeue(db, row, "The server restarted before this run started"))
        return adopt, messages

    async def _publish(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            try:
                await self.hub.publish(message)
            except Exception as exc:  # the DB has it; clients replay with `after`
                print(f"cotrain: could not publish a message ({exc})", file=sys.stderr)


class _Every:
    """A period in the follow loop: `due(now)` is true at most once per `period_s` (and at the first call)."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._last = 0.0

    def due(self, now: float) -> bool:
        if now - self._last < self.period_s:
            return False
        self._last = now
        return True


class _Cancel:
    """A cancel's two steps: SIGTERM once, then SIGKILL once `grace_s` has passed without an exit."""

    def __init__(self, run: Run, grace_s: float):
        self.run = run
        self.grace_s = grace_s
        self._term_sent: float | None = None
        self._killed = False

    def terminate(self, now: float) -> bool:
        """SIGTERM to the run, the first time only; true when it was sent now."""
        if self._term_sent is not None:
            return False
        self.run.signal(signal.SIGTERM)
        self._term_sent = now
        return True

    def overdue(self, now: float) -> bool:
        """True once, when the run outlived the grace period after SIGTERM (the caller kills it)."""
        if self._term_sent is None or self._killed or now - self._term_sent <= self.grace_s:
            return False
        self._killed = True
        return True


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _append_line(path: Path, line: str) -> None:
    """A line of the executor's own in the run's log, where the user reads the run's output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(line + "\n")
