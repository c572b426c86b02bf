"""`cotrain train` on one machine with several processes: start torchrun for the user.

Single machine, N = nodes × gpus_per_node processes (ddp / fsdp):
    python -m torch.distributed.run --standalone --nproc-per-node N -m cotrain.core.train --config FILE

A DiLoCo peer is one machine: with gpus_per_node > 1 its N = gpus_per_node processes train the
inner steps together (DDP) and the peer meets the other peers over the DHT, not a rendezvous.

Several machines: run on every node (MASTER_ADDR = node 0's address, NODE_RANK = 0..nodes-1)
    torchrun --nnodes NODES --nproc-per-node GPUS --node-rank NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint MASTER_ADDR:29500 -m cotrain.core.train --config FILE
or set MASTER_ADDR and NODE_RANK and run `cotrain train FILE`, which builds that command.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

from cotrain.config import CotrainConfig
from cotrain.parent_death import signal_when_parent_dies

DEFAULT_MASTER_PORT = 29500


def torchrun_command(config: CotrainConfig, config_path: str | Path, overrides: list[str]) -> list[str] | None:
    """The torchrun command line for `config`, or None when this process should train itself."""
    dist = config.distributed
    processes = local_processes(config)
    # a DiLoCo peer launches only its own GPUs; ddp / fsdp also launch for a multi-node rendezvous
    several = processes > 1 if dist.strategy == "diloco" else dist.world_size > 1
    if "LOCAL_RANK" in os.environ or not several:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    master = os.environ.get("MASTER_ADDR")
    if dist.strategy != "diloco" and dist.nodes > 1 and master:
        node_rank = os.environ.get("NODE_RANK")
        if node_rank is None:
            raise RuntimeError(
                f"MASTER_ADDR is set, so this is node NODE_RANK of {dist.nodes}: set NODE_RANK (0 on {master}, "
                f"then 1..{dist.nodes - 1}) on every node and run the same command there"
            )
        port = os.environ.get("MASTER_PORT", str(DEFAULT_MASTER_PORT))
        cmd += [
            "--nnodes", str(dist.nodes), "--node-rank", node_rank, "--nproc-per-node", str(dist.gpus_per_node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master}:{port}",
        ]
    else:  # every process on this machine
        cmd += ["--standalone", "--nproc-per-node", str(processes)]
    cmd += ["-m", "cotrain.core.train", "--config", str(config_path)]
    for override in overrides:
        cmd += ["--set", override]
    return cmd


def maybe_launch_torchrun(config: CotrainConfig, config_path: str | Path, overrides: list[str]) -> int | None:
    """Run the config under torchrun and return its exit code, or None if no launch is needed."""
    cmd = torchrun_command(config, config_path, overrides)
    if cmd is None:
        return None
    _check_gpus(config)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    # torchrun gets SIGTERM when this launcher dies, even by SIGKILL: it stops its ranks (which save a
    # checkpoint) instead of training on as orphans that nobody waits for
    child = subprocess.Popen(cmd, env=env, preexec_fn=functools.partial(signal_when_parent_dies, signal.SIGTERM))
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        child.send_signal(signum)  # torchrun passes it on to the workers, which checkpoint and stop

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
        # torchrun itself exits 1 when signalled; report the stop like a single process does
        return 128 + forwarded[0] if forwarded and code != 0 else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def local_processes(config: CotrainConfig) -> int:
    """Processes `cotrain train` starts on this machine: one node's share on a multi-node
    rendezvous, a DiLoCo peer's GPUs, or else every process of the run."""
    dist = config.distributed
    if dist.strategy == "diloco" or (os.environ.get("MASTER_ADDR") and dist.nodes > 1):
        return dist.gpus_per_node
    return dist.world_size


def _check_gpus(config: CotrainConfig) -> None:
    import torch

    wants_cuda = config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available())
    local = local_processes(config)
    if wants_cuda and torch.cuda.device_count() < local:
        raise RuntimeError(
            f"distributed asks for {local} processes on this machine but only {torch.cuda.device_count()} GPUs "
            "are visible: lower distributed.gpus_per_node / nodes, or set train.device = \"cpu\""
        )
