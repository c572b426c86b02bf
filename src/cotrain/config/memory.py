"""How much memory a config's training processes need, and whether a machine can ever hold them.

One answer for the New-session form's "Memory per GPU", the server's refusal of a session that no
worker can run, the queue's waiting reasons and the executor's claim: a worker never starts a run
it knows will be OOM-killed. Plain data only (no server, UI or torch imports).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cotrain.config.presets import estimate_memory_per_gpu, get_preset
from cotrain.config.schema import CotrainConfig

GIB = 1024**3
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in "20GiB", "512 MiB", "24G" (decimal), "1.5TiB" or a plain number of bytes."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a memory size; write it like 20GiB, 512MiB or 24000000000 (bytes).")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r} is not a memory size; it must be more than zero.")
    return value


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def process_memory_bytes(config: CotrainConfig) -> int | None:
    """Rough bytes one training process needs (see presets.estimate_memory_per_gpu); None for a
    model without a size preset (its size is unknown, so it is not checked)."""
    try:
        preset = get_preset(config.model.type, config.model.size)
    except KeyError:
        return None
    dist = config.distributed
    micro = config.train.micro_batch_size or max(1, config.train.batch_size // max(1, dist.data_parallel_size))
    shards = dist.world_size if dist.strategy == "fsdp" else 1
    return estimate_memory_per_gpu(
        preset, precision=config.model.precision, micro_batch_size=micro, seq_length=config.data.seq_length,
        shards=shards, tokenizer_vocab=config.data.vocab_size,
    )


def processes_per_machine(config: CotrainConfig) -> int:
    """Processes a worker starts for the session on its one machine: a DiLoCo peer's
    gpus_per_node, or every process of a ddp / fsdp run (the executor runs them all locally; see
    core.launch.local_processes)."""
    dist = config.distributed
    return dist.gpus_per_node if dist.strategy == "diloco" else dist.world_size


@dataclass(frozen=True)
class Need:
    """What a session asks of one machine."""

    model: str  # "llama2 7B", for sentences
    gpus_per_node: int
    process_bytes: int | None  # None: not known (no size preset), so not checked
    processes: int  # on that one machine

    def bytes_on(self, gpus: int) -> int | None:
        """Bytes the biggest share needs on a machine with `gpus` GPUs: per GPU (its processes
        split over the gpus_per_node GPUs the run gets) or, on a CPU machine (gpus == 0), all its
        processes in host RAM."""
        if self.process_bytes is None:
            return None
        if gpus:
            return self.process_bytes * math.ceil(self.processes / max(1, min(self.gpus_per_node, gpus)))
        return self.process_bytes * self.processes


def need_of(config: CotrainConfig) -> Need:
    return Need(
        model=f"{config.model.type} {config.model.size}", gpus_per_node=config.distributed.gpus_per_node,
        process_bytes=process_memory_bytes(config), processes=processes_per_machine(config),
    )


def gpus_fit(need: Need, gpus: int) -> bool:
    """A machine without GPUs trains on CPU, whatever gpus_per_node says; one with GPUs gives each
    run whole GPUs, gpus_per_node of them."""
    return gpus == 0 or need.gpus_per_node <= gpus


def memory_fits(need: Need, gpus: int, memory_bytes: int | None) -> bool:
    """Unknown on either side (no preset, a worker that could not measure): not a reason to refuse."""
    required = need.bytes_on(gpus)
    return required is None or memory_bytes is None or required <= memory_bytes


def fits(need: Need, gpus: int, memory_bytes: int | None) -> bool:
    """Whether a machine with `gpus` GPUs and `memory_bytes` per GPU (host RAM without GPUs) can
    ever run the session: the one fit rule of the server, the scheduler and the executor."""
    return gpus_fit(need, gpus) and memory_fits(need, gpus, memory_bytes)
