"""The batch script of a session's Slurm job, from its engine config.

DDP / FSDP: one job of `nodes` nodes, one task per node; `srun` starts the engine on every node,
under torchrun when the run has several processes, with a static rendezvous on the first node of
the allocation (node rank = SLURM_NODEID, port derived from the job id so two jobs sharing a node
do not collide).

DiLoCo: `distributed.nodes` is the session's number of peers, one job each. The first job is the
session's own engine (the executor follows its events, as on the local executor); the others are
`cotrain join`-equivalent peers (launcher.py gives each its own COTRAIN_HOME and identity). A peer's
job starts once the engine's has (`--dependency=after:`) and ends itself soon after the engine's job
has ended, however it ended (completed, cancelled, failed, or `scancel`led by an admin or by another
worker): so everything that ends the engine's job ends the whole session's jobs.

Stopping: `scancel --signal=USR1` (STOP_SIGNAL, without --full) reaches the job's step only, every
process of it: the task's wrapper (`task_command`) turns it into a SIGTERM for the engine (or torchrun,
which passes it on to the ranks) alone, and they save a checkpoint. Every other process of the step
ignores USR1: the engine's helpers, hivemind's p2p daemon among them (a TERM would stop it under a
DiLoCo round, which then waits for its timeout), and the ranks (it reached them as an ignored signal).
Not the batch shell's `srun`, which would turn a TERM into a SIGKILL of its tasks. A TERM Slurm sends
the whole job (a plain `scancel`) reaches the batch shell too, which ignores it and waits for its step.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from cotrain.config import CotrainConfig
from cotrain.server.slurm.settings import SlurmSettings

ENGINE_MODULE = "cotrain.core.train"
PORT_BASE, PORT_SPAN = 20000, 20000  # MASTER_PORT = PORT_BASE + job id % PORT_SPAN
PEER_WATCH_S = 2  # how often a DiLoCo peer's job looks whether the engine's job still runs
PEER_GRACE_S = 30  # from the peer's stop signal (the engine's job ended) to its scancel
INITIAL_PEERS_ENV = "COTRAIN_DISTRIBUTED_DILOCO_INITIAL_PEERS"
ENGINE_ADDRESS_WAIT_S = 600  # how long a peer without a DHT waits for the engine's address
STOP_SIGNAL = "USR1"  # what asks a job's run to save a checkpoint and stop (see above)
# the engine's job states in which its peers go on (any other, or a job Slurm has forgotten: it ended)
ENGINE_ALIVE = ("PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SIGNALING")
# seconds before a time limit at which the job's step gets STOP_SIGNAL, so the run saves a checkpoint and stops
# (its retry resumes from it) instead of being killed with the step
TIME_LIMIT_TERM_S = 120


@dataclass(frozen=True)
class JobSpec:
    """What one job of a session asks Slurm for and runs."""

    session_id: str
    config_path: Path
    nodes: int
    processes_per_node: int
    gpus_per_node: int  # 0: a CPU job
    python: str
    peers: int = 0  # DiLoCo: the jobs of the session's other peers (nodes - 1), beside the engine's

    @property
    def job_name(self) -> str:
        return f"cotrain-{self.session_id}"

    def peer_job_name(self, peer: int) -> str:
        return f"cotrain-{self.session_id}-peer{peer}"


def job_spec(config: CotrainConfig, config_path: Path, session_id: str, settings: SlurmSettings,
             python: str) -> JobSpec:
    """The job a session's config needs: its nodes, processes and GPUs per node."""
    dist = config.distributed
    diloco = dist.strategy == "diloco"
    wants_gpus = settings.gpus and config.train.device != "cpu"
    return JobSpec(session_id, config_path, 1 if diloco else dist.nodes, dist.gpus_per_node,
                   dist.gpus_per_node if wants_gpus else 0, python, peers=dist.nodes - 1 if diloco else 0)


def engine_command(spec: JobSpec) -> str:
    """The command one task runs (on every node), as a shell string: `$SLURM_NODEID`, `$MASTER_ADDR` and
    `$MASTER_PORT` are expanded by the task's shell."""
    engine = ["-m", ENGINE_MODULE, "--config", str(spec.config_path)]
    python = shlex.quote(spec.python)
    if spec.nodes == 1 and spec.processes_per_node == 1:
        return " ".join([python, *map(shlex.quote, engine)])
    torchrun = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(spec.processes_per_node)]
    if spec.nodes == 1:
        torchrun.append("--standalone")
    else:
        torchrun += ["--nnodes", str(spec.nodes), "--node-rank", '"$SLURM_NODEID"',
                     "--master-addr", '"$MASTER_ADDR"', "--master-port", '"$MASTER_PORT"']
    return " ".join([*torchrun, *map(shlex.quote, engine)])


def task_command(spec: JobSpec) -> str:
    """What each task of the step runs (bash): the engine, started with STOP_SIGNAL ignored (so its
    processes ignore it), and a SIGTERM for it alone when the step gets STOP_SIGNAL or SIGTERM; exits with
    its code."""
    return "\n".join([
        f"trap '' {STOP_SIGNAL}",
        f"{engine_command(spec)} &",
        "run=$!",
        f"trap 'kill -TERM \"$run\"' {STOP_SIGNAL}",
        # a TERM Slurm sends every process of the step (a plain scancel) reaches the run too: this shell stays, its
        # parent, until the run has stopped (Slurm's proctrack/linuxproc finds a step's processes by their parents,
        # so a run this shell left behind would outlive its job, SIGKILL and all)
        "trap 'kill -TERM \"$run\" 2>/dev/null' TERM",
        # `wait` returns early for a trapped signal: wait again while the run lives
        'while true; do wait "$run"; code=$?; kill -0 "$run" 2>/dev/null || break; done',
        'exit "$code"',
    ])


def sbatch_options(spec: JobSpec, settings: SlurmSettings, narrowed: list[str] | None = None) -> list[str]:
    """The job's `#SBATCH` options but its stderr file (each job of a DiLoCo session has its own): its shape,
    the worker's settings, then a session's own narrowing (later options win in sbatch)."""
    options = [f"--nodes={spec.nodes}", "--ntasks-per-node=1", "--open-mode=append",
               f"--signal={STOP_SIGNAL}@{TIME_LIMIT_TERM_S}"]
    if spec.gpus_per_node:
        options.append(f"--gpus-per-node={spec.gpus_per_node}")
    return options + settings.sbatch_options() + list(narrowed or [])


def peer_options(engine_job: str, previous: str | None = None) -> list[str]:
    """A DiLoCo peer's own `#SBATCH` options: it starts once the engine's job has started (or ended), and
    once the `previous` job of the same peer (an earlier attempt's, still stopping) has ended: never two
    jobs on one peer's identity and checkpoints."""
    return [f"--dependency=after:{engine_job}" + (f",afterany:{previous}" if previous else "")]


def batch_script(spec: JobSpec, options: list[str], follows: str | None = None,
                 engine_log: tuple[Path, str] | None = None) -> str:
    """The whole batch script (sent to sbatch on stdin). `follows`: the engine's job id, for a DiLoCo peer's
    job, which stops its run once that job has ended (`_watch_engine`). `engine_log`: (the engine's stderr
    file, the banner line of this attempt), for a peer with no DHT to bootstrap from (`_engine_address`)."""
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options), ""]
    lines += [
        "set -u",
        'echo "cotrain: Slurm job $SLURM_JOB_ID runs on $SLURM_JOB_NODELIST"',
        # the rendezvous: the first node of the allocation, at the address Slurm itself reaches it by
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "head_addr=$(scontrol show node \"$head_node\" -o 2>/dev/null | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')",
        'export MASTER_ADDR="${head_addr:-$head_node}"',
        f"export MASTER_PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))",
        # a TERM for the job (cancel, time limit) reaches the step's engine; this shell waits for it to stop
        "trap 'echo \"cotrain: SIGTERM: waiting for the run to save its checkpoint and stop\" >&2' TERM",
        *(_watch_engine(follows) if follows else []),
        *(_engine_address(*engine_log) if engine_log else []),
        # --export=ALL: the step sees MASTER_* too (sbatch's --export list would otherwise apply to srun as well)
        "srun --export=ALL --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "
        f"{shlex.quote(task_command(spec))} &",
        "step=$!",
        "while true; do",
        '  wait "$step"',
        "  code=$?",
        '  kill -0 "$step" 2>/dev/null || break',
        "done",
        'exit "$code"',
        "",
    ]
    return "\n".join(lines)


def _watch_engine(engine_job: str) -> list[str]:
    """A DiLoCo peer's watcher (in the background of its batch script): once the engine's job has ended,
    STOP_SIGNAL to this job's step (the peer saves a checkpoint and stops), then after PEER_GRACE_S `scancel`. A
    Slurm error other than "Invalid job id" (slurmctld away for a moment) is asked again."""
    alive = "|".join(ENGINE_ALIVE)
    watch = (
        f"while sleep {PEER_WATCH_S}; do "
        f"out=$(scontrol show job --oneliner {shlex.quote(engine_job)} 2>&1); "
        'case "$out" in *"Invalid job id"*) break;; esac; '
        "state=$(printf '%s' \"$out\" | tr ' ' '\\n' | sed -n 's/^JobState=//p' | head -n 1); "
        f'case "$state" in ""|{alive}) ;; *) break;; esac; '
        "done; "
        f'echo "cotrain: the session\'s engine (Slurm job {engine_job}) has ended: stopping this peer" >&2; '
        f'scancel --signal={STOP_SIGNAL} "$SLURM_JOB_ID"; '
        f'sleep {PEER_GRACE_S}; scancel "$SLURM_JOB_ID"'
    )
    return [f"( {watch} ) &"]


def _engine_address(engine_stderr: Path, banner: str) -> list[str]:
    """A DiLoCo peer of a session with no DHT to bootstrap from (no server DHT, no initialPeers) joins
    through the engine: the addresses the engine printed in this attempt ("others join with initial_peers
    = [...]", after `banner`), waited for up to ENGINE_ADDRESS_WAIT_S."""
    awk = ("index($0, b) { found = 1; line = \"\" } "
           "found && /others join with initial_peers = / { line = $0 } END { print line }")
    return [
        "line=",
        f"for _ in $(seq {ENGINE_ADDRESS_WAIT_S}); do",
        f"  line=$(awk -v b={shlex.quote(banner)} {shlex.quote(awk)} {shlex.quote(str(engine_stderr))})",
        '  [ -n "$line" ] && break',
        "  sleep 1",
        "done",
        '[ -n "$line" ] || { echo "cotrain: the session\'s engine printed no address to join through" >&2; exit 1; }',
        # its Python list of quoted multiaddrs, as the JSON list a config override takes
        f"export {INITIAL_PEERS_ENV}=$(printf '%s' \"${{line#*initial_peers = }}\" | tr \"'\" '\"')",
        f'echo "cotrain: joining through the session\'s engine: ${INITIAL_PEERS_ENV}"',
    ]
