"""The batch script of a session's Slurm job, from its engine config.

DDP / FSDP: one job of `nodes` nodes, one task per node; `srun` starts the engine on every node,
under torchrun when the run has several processes, with a static rendezvous on the first node of
the allocation (node rank = SLURM_NODEID, port derived from the job id so two jobs sharing a node
do not collide). A DiLoCo session is one peer per job, as on the local executor (its other peers
join over the DHT).

Stopping: `scancel --signal=TERM` (without --full) reaches the job's step only: torchrun passes it on
to the ranks, which save a checkpoint. Not the batch shell's `srun`, which would turn a TERM into a
SIGKILL of its tasks. A TERM Slurm sends the whole job (time limit, a plain `scancel`) reaches the
batch shell too, which ignores it and waits for its step to end.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from cotrain.config import CotrainConfig
from cotrain.server.slurm.settings import SlurmSettings

ENGINE_MODULE = "cotrain.core.train"
PORT_BASE, PORT_SPAN = 20000, 20000  # MASTER_PORT = PORT_BASE + job id % PORT_SPAN
# seconds before a time limit at which the job's step gets SIGTERM, so the run saves a checkpoint and stops
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

    @property
    def job_name(self) -> str:
        return f"cotrain-{self.session_id}"


def job_spec(config: CotrainConfig, config_path: Path, session_id: str, settings: SlurmSettings,
             python: str) -> JobSpec:
    """The job a session's config needs: its nodes, processes and GPUs per node."""
    dist = config.distributed
    nodes = 1 if dist.strategy == "diloco" else dist.nodes
    wants_gpus = settings.gpus and config.train.device != "cpu"
    return JobSpec(session_id, config_path, nodes, dist.gpus_per_node, dist.gpus_per_node if wants_gpus else 0,
                   python)


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


def sbatch_options(spec: JobSpec, settings: SlurmSettings, stderr_path: Path,
                   narrowed: list[str] | None = None) -> list[str]:
    """The job's `#SBATCH` options: its shape, its stderr file, the worker's settings, then a session's own
    narrowing (later options win in sbatch)."""
    options = [f"--nodes={spec.nodes}", "--ntasks-per-node=1", f"--error={stderr_path}", "--open-mode=append",
               f"--signal=TERM@{TIME_LIMIT_TERM_S}"]
    if spec.gpus_per_node:
        options.append(f"--gpus-per-node={spec.gpus_per_node}")
    return options + settings.sbatch_options() + list(narrowed or [])


def batch_script(spec: JobSpec, options: list[str]) -> str:
    """The whole batch script (sent to sbatch on stdin)."""
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
        # --export=ALL: the step sees MASTER_* too (sbatch's --export list would otherwise apply to srun as well)
        "srun --export=ALL --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "
        f"{shlex.quote('exec ' + engine_command(spec))} &",
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
