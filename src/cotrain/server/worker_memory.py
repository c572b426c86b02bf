"""The memory a worker offers one training process, reported in its `workers` row so the server
can refuse (or hold back) sessions that would be OOM-killed there: each GPU's memory on a GPU
worker, host RAM (within the container's limit) on a CPU worker. `COTRAIN_WORKER_MEMORY`
("20GiB", read by `Settings`) overrides what is measured, e.g. to keep room for other programs on the
machine."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "COTRAIN_WORKER_MEMORY"
NO_LIMIT = 1 << 60  # cgroup v1 writes a huge number for "unlimited"


def detect_worker_memory(gpus: list[int], override: int | None = None) -> int | None:
    """Bytes per GPU (the smallest of this worker's GPUs) or of host RAM; None when the GPUs'
    memory cannot be read (then memory is not checked for this worker). `override` is
    COTRAIN_WORKER_MEMORY (`Settings.worker_memory`), which wins over what is measured."""
    if override is not None:
        return override
    if gpus:
        return gpu_memory(gpus)
    return host_memory()


def gpu_memory(gpus: list[int]) -> int | None:
    per_gpu = _nvidia_smi_memory() or _torch_memory()
    if not per_gpu:
        log.warning("could not read the GPUs' memory; set %s (e.g. 80GiB) so oversized sessions are refused", ENV)
        return None
    mine = [per_gpu[i] for i in gpus if i in per_gpu] or list(per_gpu.values())
    return min(mine)


def _nvidia_smi_memory() -> dict[int, int]:
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        index, _, mib = line.partition(",")
        if index.strip().isdigit() and mib.strip().isdigit():
            found[int(index)] = int(mib) * 1024**2
    return found


def _torch_memory() -> dict[int, int]:
    if importlib.util.find_spec("torch") is None:
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    return {i: torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())}


def host_memory() -> int | None:
    """Physical RAM, or the cgroup's memory limit when that is lower (a container)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = None
    limit = _cgroup_limit()
    if total is None:
        return limit
    return min(total, limit) if limit else total


def _cgroup_limit() -> int | None:
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < NO_LIMIT:
            return int(text)
    return None
