"""Whether the registered workers can ever run a session: GPUs per node and memory (the estimate
the New-session form shows, against each worker's GPU memory or host RAM, as it reports them in
the `workers` table). A session no live worker can fit is refused when it is created, edited or
started; one that stops fitting later (a worker left) waits with a reason naming its need and the
largest worker, and the queue skips it instead of blocking the sessions behind it.
"""

from __future__ import annotations

import functools
import time
import tomllib
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.config import validate_config
from cotrain.config.memory import Need, fits, gib, gpus_fit, need_of
from cotrain.server.config_generator import SessionConfigError
from cotrain.server.orm import TrainingSession, Worker


def gpus_per_node(row: TrainingSession) -> int:
    return int((row.request.get("distributedConfig") or {}).get("gpusPerNode") or 1)


@functools.lru_cache(maxsize=4096)
def _need_of_toml(text: str) -> Need | None:
    """The need of a stored config (parsed once per distinct text: the queue asks every second)."""
    try:
        return need_of(validate_config(tomllib.loads(text)))
    except Exception:  # an old or hand-edited row: fall back to what the request says
        return None


def need_of_row(row: TrainingSession) -> Need:
    need = _need_of_toml(row.config_toml) if row.config_toml else None
    if need is None:
        gpus = gpus_per_node(row)
        need = Need(model=f"{row.model_type} {row.model_size}", gpus_per_node=gpus, process_bytes=None, processes=gpus)
    return need


def live_workers(db: Session, heartbeat_timeout_s: float) -> list[Worker]:
    return list(db.scalars(select(Worker).where(Worker.heartbeat_at >= time.time() - heartbeat_timeout_s)))


def worker_fits(need: Need, worker: Worker) -> bool:
    return fits(need, worker.gpus, worker.memory_bytes)


def gpu_shortfall(need: Need, workers: Sequence[Worker]) -> Worker | None:
    """The worker with the most GPUs when none has gpus_per_node of them; None when one has."""
    if not workers or any(gpus_fit(need, w.gpus) for w in workers):
        return None
    return max(workers, key=lambda w: (w.gpus, w.id))


def memory_shortfall(need: Need, workers: Sequence[Worker]) -> Worker | None:
    """The worker with the most memory among those with the GPUs when none can hold the run;
    None when one can (or none has the GPUs: that is the GPU shortfall)."""
    candidates = [w for w in workers if gpus_fit(need, w.gpus)]
    if not candidates or any(worker_fits(need, w) for w in candidates):
        return None
    return max(candidates, key=lambda w: (w.memory_bytes or 0, w.id))


def memory_sentence(need: Need, largest: Worker) -> str:
    """"llama2 7B needs about 100.4 GiB per process; the largest worker has 24.0 GiB of RAM" (no
    worker id: it names a host and a path, which the session's readers need not know)."""
    assert need.process_bytes is not None and largest.memory_bytes is not None
    text = f"{need.model} needs about {gib(need.process_bytes)} per process"
    total = need.bytes_on(largest.gpus)
    if total is not None and total != need.process_bytes:
        where = "per GPU" if largest.gpus else "on one machine"
        text += f" ({gib(total)} {where} for its {need.processes} processes)"
    kind = "per GPU" if largest.gpus else "of RAM"
    return f"{text}; the largest worker has {gib(largest.memory_bytes)} {kind}"


MEMORY_ADVICE = (
    "Choose a smaller model size, batch size or sequence length, or start a `cotrain worker` on a machine with "
    "more memory."
)


def waiting_shortfall(need: Need, workers: Sequence[Worker]) -> str | None:
    """Why no live worker can ever run the session, as a waiting reason; None when one can."""
    largest = gpu_shortfall(need, workers)
    if largest is not None:
        n = need.gpus_per_node
        return (
            f"Waiting: needs {n} GPUs per node; the largest worker ({largest.id}) has {largest.gpus}. "
            f"Lower gpusPerNode to {largest.gpus} or fewer, or start a `cotrain worker` on a machine with {n} GPUs."
        )
    largest = memory_shortfall(need, workers)
    if largest is not None:
        return f"Waiting: {memory_sentence(need, largest)}, so no worker can run it yet. {MEMORY_ADVICE}"
    return None


def require_capacity(factory: sessionmaker[Session], need: Need, heartbeat_timeout_s: float) -> None:
    """Refuse (422, naming the field) a session that no live worker can ever run, so it never sits
    in the queue, and never starts only to be OOM-killed. With no worker at all it is accepted: it
    waits for one, and says so."""
    with factory.begin() as db:
        workers = live_workers(db, heartbeat_timeout_s)
    largest = gpu_shortfall(need, workers)
    if largest is not None:
        n = need.gpus_per_node
        raise SessionConfigError([{
            "loc": ["body", "distributedConfig", "gpusPerNode"], "type": "capacity",
            "msg": f"distributedConfig.gpusPerNode = {n}, and the largest worker has {largest.gpus} "
                   f"GPUs, so no registered worker can ever run this session. Lower gpusPerNode to {largest.gpus} "
                   f"or fewer, or start a `cotrain worker` on a machine with {n} GPUs, then send the request again.",
        }])
    largest = memory_shortfall(need, workers)
    if largest is not None:
        raise SessionConfigError([{
            "loc": ["body", "modelConfig", "size"], "type": "capacity",
            "msg": f"{memory_sentence(need, largest)}, so no registered worker can ever run this session (it would "
                   f"be killed for lack of memory). {MEMORY_ADVICE} Then send the request again.",
        }])
