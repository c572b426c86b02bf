"""Hardware figures for the progress events: peak FLOP/s (for MFU), memory, GPU utilisation."""

from __future__ import annotations

import os
import time
from functools import cache

import torch

from cotrain.config.env_settings import EngineSettings

# Dense peak FLOP/s per GPU from the vendors' data sheets: (16-bit tensor core, fp32/tf32).
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "A10": (125e12, 62.5e12),
    "L4": (121e12, 60e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
}


def peak_flops(device: torch.device, precision: str) -> float:
    """The device's peak: `COTRAIN_PEAK_FLOPS` if set, the data-sheet figure for known GPUs, and
    for CPUs (and unknown GPUs) a short measured matmul rate, the best this machine reaches."""
    override = EngineSettings.from_env().peak_flops
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, full) in GPU_PEAKS.items():
            if key in name:
                return half if precision in ("bf16", "fp16") else full
    return measured_matmul_flops(device.type, precision)


@cache
def measured_matmul_flops(device_type: str, precision: str) -> float:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if device_type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    n = 1024
    a = torch.randn(n, n, device=device_type, dtype=dtype)
    b = torch.randn(n, n, device=device_type, dtype=dtype)
    a @ b  # warm up
    best = float("inf")
    for _ in range(3):
        _sync(device_type)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device_type)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def memory_bytes(device: torch.device) -> int:
    """GPU: peak allocated by torch; CPU: the process's resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def gpu_utilization(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # needs NVML (pynvml); absent on some installs
        return None
