"""What each machine of a run is doing: the `system` block of the progress events.

Every process of a run samples at the log interval (never in between, never blocking): psutil's
counters for CPU, RAM, disk and network, and NVIDIA's NVML for the GPUs. Disk and network are the
host's counters (every interface, loopback included, so the traffic of a run on one machine shows
too), turned into rates over the interval since the previous sample; a rate, never a raw counter.

On a node with several processes (torchrun, one per GPU) the host's figures are taken once, by
its local rank 0, while each process adds its own resident memory and tokens/s. `merge_nodes`
folds the samples gathered from every process into one NODE per node (see the README's event
stream section for the fields). The `gpus` list is absent, not empty, on a node without a GPU or
without NVML.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

HOST_FIELDS = (
    "host_cpus", "cpu_percent", "ram_used_bytes", "ram_total_bytes", "net_sent_bytes_per_s", "net_recv_bytes_per_s",
    "disk_read_bytes_per_s", "disk_write_bytes_per_s", "time",
)


@dataclass(frozen=True)
class Counters:
    """Cumulative host counters at one moment (monotonic seconds)."""

    at: float
    net_sent: int
    net_recv: int
    disk_read: int
    disk_write: int

    @classmethod
    def now(cls) -> Counters:
        net = psutil.net_io_counters()  # every interface, loopback included
        disk = psutil.disk_io_counters()  # whole disks, not their partitions; None in some containers
        return cls(
            time.monotonic(),
            net.bytes_sent if net else 0, net.bytes_recv if net else 0,
            disk.read_bytes if disk else 0, disk.write_bytes if disk else 0,
        )

    def rates_since(self, before: Counters) -> dict[str, float]:
        """Bytes per second between `before` and these counters (0 for a counter that went back)."""
        seconds = max(self.at - before.at, 1e-6)

        def rate(now: int, then: int) -> float:
            return round(max(now - then, 0) / seconds, 1)

        return {
            "net_sent_bytes_per_s": rate(self.net_sent, before.net_sent),
            "net_recv_bytes_per_s": rate(self.net_recv, before.net_recv),
            "disk_read_bytes_per_s": rate(self.disk_read, before.disk_read),
            "disk_write_bytes_per_s": rate(self.disk_write, before.disk_write),
        }


class GpuReader:
    """NVML handles of the GPUs this run may use: those CUDA_VISIBLE_DEVICES names (indices or
    UUIDs), or every GPU of the machine. `index` is the position in that list, as torch numbers them."""

    def __init__(self, nvml: Any, handles: list[Any]):
        self.nvml = nvml
        self.handles = handles

    @classmethod
    def open(cls) -> GpuReader | None:
        """None without the NVML library or without a GPU (the caller then omits `gpus`)."""
        try:
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            names = [n.strip() for n in visible.split(",") if n.strip()] if visible is not None else [
                str(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # no driver, no library: a machine without NVIDIA GPUs
            return None
        handles = [h for h in (_nvml_handle(pynvml, name) for name in names) if h is not None]
        return cls(pynvml, handles) if handles else None

    def read(self) -> list[dict[str, Any]]:
        gpus = []
        for index, handle in enumerate(self.handles):
            try:
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                gpu: dict[str, Any] = {
                    "index": index,
                    "name": _text(self.nvml.nvmlDeviceGetName(handle)),
                    "util_percent": float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    "mem_used_bytes": int(memory.used),
                    "mem_total_bytes": int(memory.total),
                }
            except Exception:  # a GPU that does not report (MIG slices report no utilisation)
                continue
            gpu["power_w"] = _optional(lambda h=handle: self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
            gpu["temp_c"] = _optional(lambda h=handle: self.nvml.nvmlDeviceGetTemperature(h, 0))  # 0: the GPU die
            gpus.append(gpu)
        return gpus


def _nvml_handle(nvml: Any, name: str) -> Any:
    try:
        if name.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(name))
        return nvml.nvmlDeviceGetHandleByUUID(name)
    except Exception:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(read: Any) -> float | None:
    try:
        return round(float(read()), 1)
    except Exception:  # not every board reports power or temperature
        return None


def node_of_this_process() -> str:
    """'node-<n>': torchrun's node rank from the rendezvous (GROUP_RANK), else NODE_RANK, else 0."""
    return f"node-{os.environ.get('GROUP_RANK') or os.environ.get('NODE_RANK') or 0}"


class SystemSampler:
    """One process's sampler. `host_wide` (the node's local rank 0) also reads the host's CPU, RAM,
    disk, network and GPUs; the others report only what is theirs (resident memory, tokens/s)."""

    def __init__(self, node: str, host_wide: bool):
        self.node = node
        self.host_wide = host_wide
        self.process = psutil.Process()
        self.gpus = GpuReader.open() if host_wide else None
        self._last = Counters.now() if host_wide else None
        if host_wide:
            psutil.cpu_percent(interval=None)  # the first call only starts the CPU figure's interval

    @classmethod
    def for_this_process(cls) -> SystemSampler:
        return cls(node_of_this_process(), host_wide=int(os.environ.get("LOCAL_RANK", "0")) == 0)

    def sample(self, tokens_per_second: float | None = None) -> dict[str, Any]:
        """This process's figures now; the host's too (rates since the previous sample) if host-wide."""
        sample: dict[str, Any] = {
            "node": self.node,
            "process_rss_bytes": int(self.process.memory_info().rss),
            "tokens_per_second": tokens_per_second,
        }
        if self._last is None:
            return sample
        counters = Counters.now()
        memory = psutil.virtual_memory()
        sample.update(
            host_cpus=psutil.cpu_count() or 1,
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            ram_used_bytes=int(memory.total - memory.available),
            ram_total_bytes=int(memory.total),
            **counters.rates_since(self._last),
            time=time.time(),
        )
        self._last = counters
        if self.gpus is not None:
            gpus = self.gpus.read()
            if gpus:
                sample["gpus"] = gpus
        return sample


def merge_nodes(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One NODE per node from every process's sample: the host's figures from the process that read
    them, resident memory and tokens/s summed over the node's processes. Nodes in order of first
    appearance (rank order)."""
    nodes: dict[str, dict[str, Any]] = {}
    for sample in samples:
        node = nodes.setdefault(sample["node"], {"node": sample["node"], "process_rss_bytes": 0,
                                                 "tokens_per_second": None})
        node["process_rss_bytes"] += int(sample.get("process_rss_bytes") or 0)
        if sample.get("tokens_per_second") is not None:
            node["tokens_per_second"] = (node["tokens_per_second"] or 0.0) + float(sample["tokens_per_second"])
        if "time" in sample:
            node.update({key: sample[key] for key in (*HOST_FIELDS, "gpus") if key in sample})
    return [_ordered(node) for node in nodes.values()]


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """The contract's key order (easier to read in events.jsonl); `gpus` last, when present."""
    keys = ("node", "host_cpus", "cpu_percent", "ram_used_bytes", "ram_total_bytes", "process_rss_bytes",
            "net_sent_bytes_per_s", "net_recv_bytes_per_s", "disk_read_bytes_per_s", "disk_write_bytes_per_s",
            "tokens_per_second", "time", "gpus")
    ordered = {key: node[key] for key in keys if key in node}
    if ordered.get("tokens_per_second") is not None:
        ordered["tokens_per_second"] = round(ordered["tokens_per_second"], 1)
    return ordered
