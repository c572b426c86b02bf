"""Assigns the machine's resources to runs: whole GPUs by index (never shared by two
sessions) and CPU cores (a share per GPU, or per slot on a machine without GPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Allocation:
    session_id: str
    gpu_ids: tuple[int, ...] = ()
    cpu_cores: tuple[int, ...] = ()

    @property
    def cuda_visible_devices(self) -> str:
        """For the child's CUDA_VISIBLE_DEVICES: its GPUs, or none at all on a CPU slot."""
        return ",".join(str(i) for i in self.gpu_ids)


@dataclass
class ResourcePool:
    gpus: list[int]
    cpu_slots: int = 1
    cpus: list[int] = field(default_factory=available_cpus)
    allocations: dict[str, Allocation] = field(default_factory=dict)

    def gpus_needed(self, gpus_per_node: int) -> int:
        """One node's GPUs run here (other nodes of a DiLoCo/DDP run are other machines)."""
        return gpus_per_node if self.gpus else 0

    def can_ever_fit(self, gpus_per_node: int) -> bool:
        return self.gpus_needed(gpus_per_node) <= len(self.gpus)

    def free_gpus(self) -> list[int]:
        used = {i for a in self.allocations.values() for i in a.gpu_ids}
        return [i for i in self.gpus if i not in used]

    def free_cpus(self) -> list[int]:
        used = {i for a in self.allocations.values() for i in a.cpu_cores}
        return [i for i in self.cpus if i not in used]

    def cores_for(self, gpus: int) -> int:
        """Cores a run gets: an equal share per GPU, or per CPU slot."""
        if self.gpus:
            return max(1, len(self.cpus) // len(self.gpus)) * gpus
        return max(1, len(self.cpus) // max(1, self.cpu_slots))

    def fits(self, gpus_per_node: int) -> bool:
        need = self.gpus_needed(gpus_per_node)
        if need:
            return len(self.free_gpus()) >= need
        return len(self.allocations) < self.cpu_slots

    def allocate(self, session_id: str, gpus_per_node: int) -> Allocation | None:
        if not self.fits(gpus_per_node):
            return None
        need = self.gpus_needed(gpus_per_node)
        return self._record(session_id, tuple(self.free_gpus()[:need]))

    def adopt(self, session_id: str, gpu_ids: tuple[int, ...]) -> Allocation:
        """Record the GPUs of a run that was started before a restart."""
        return self._record(session_id, gpu_ids)

    def _record(self, session_id: str, gpu_ids: tuple[int, ...]) -> Allocation:
        free = self.free_cpus()
        cores = tuple(free[: self.cores_for(len(gpu_ids))]) or tuple(self.cpus)  # never zero cores
        allocation = Allocation(session_id, gpu_ids, cores)
        self.allocations[session_id] = allocation
        return allocation

    def release(self, session_id: str) -> None:
        self.allocations.pop(session_id, None)

    @property
    def capacity(self) -> int:
        return len(self.gpus) if self.gpus else self.cpu_slots
