"""The queue's claim on real databases: priority order, and under concurrency every session is
claimed by exactly one worker (PostgreSQL: FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from cotrain.db import make_db_factory, make_engine, run_migrations
from cotrain.server.orm import SessionStatus, TrainingSession
from cotrain.server.queue import claim_next
from cotrain.server.scheduler import ResourcePool


def add_sessions(factory, count: int, priority=lambda i: 0) -> None:
    with factory.begin() as db:
        for i in range(count):
            db.add(TrainingSession(
                id=f"s{i:03d}", name=f"s{i}", description="", status=SessionStatus.QUEUED, priority=priority(i),
                request={},
                config_path="", config_toml="", model_type="llama2", model_size="debug", strategy="ddp",
                queued_at=time.time() + i * 1e-3, latest_metrics={},
            ))


def claim_all_concurrently(factory, workers: int) -> Counter:
    claimed: Counter = Counter()
    lock = threading.Lock()

    def work(worker: int) -> None:
        while (row := claim_next(factory, f"w{worker}", lambda r: True)) is not None:
            with lock:
                claimed[row.id] += 1

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return claimed


def test_priority_then_age_on_sqlite(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    run_migrations(engine)
    factory = make_db_factory(engine)
    add_sessions(factory, 4, priority=lambda i: 5 if i == 2 else 0)
    order = [claim_next(factory, "w", lambda r: True).id for _ in range(4)]
    assert order == ["s002", "s000", "s001", "s003"]
    assert claim_next(factory, "w", lambda r: True) is None


def test_each_session_claimed_once_on_sqlite(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    run_migrations(engine)
    factory = make_db_factory(engine)
    add_sessions(factory, 30)
    claimed = claim_all_concurrently(factory, 4)
    assert sorted(claimed) == [f"s{i:03d}" for i in range(30)] and set(claimed.values()) == {1}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sessions_that_fit_no_worker_never_hide_the_rest(request, tmp_path, database):
    """The scan is not limited to the top N rows: 45 higher-priority sessions the worker cannot
    fit (two pages and more) do not keep it from the one it can."""
    url = request.getfixturevalue("pg_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'q.db'}"
    engine = make_engine(url)
    run_migrations(engine)
    factory = make_db_factory(engine)
    add_sessions(factory, 46, priority=lambda i: 0 if i == 45 else 10)
    seen: list[str] = []

    def fits(row: TrainingSession) -> bool:
        seen.append(row.id)
        return row.id == "s045"

    claimed = claim_next(factory, "w", fits, batch=20)
    assert claimed is not None and claimed.id == "s045" and claimed.worker_id == "w"
    assert seen == [f"s{i:03d}" for i in range(46)]  # each looked at once, in queue order
    assert claim_next(factory, "w", lambda r: r.id == "s045") is None  # taken; the others stay queued
    with factory.begin() as db:
        assert db.query(TrainingSession).filter(TrainingSession.status == SessionStatus.QUEUED).count() == 45
    engine.dispose()


@pytest.mark.postgres
def test_each_session_claimed_once_on_postgres_skip_locked(pg_url):
    engine = make_engine(pg_url)
    run_migrations(engine)
    factory = make_db_factory(engine)
    add_sessions(factory, 60)
    claimed = claim_all_concurrently(factory, 6)
    engine.dispose()
    assert sorted(claimed) == [f"s{i:03d}" for i in range(60)] and set(claimed.values()) == {1}


def test_gpus_are_never_shared():
    pool = ResourcePool(gpus=[0, 1, 2], cpu_slots=1, cpus=list(range(6)))
    a = pool.allocate("a", 2)
    assert a is not None and a.gpu_ids == (0, 1)
    assert pool.allocate("b", 2) is None  # one GPU left
    assert a.cpu_cores == (0, 1, 2, 3)  # two cores per GPU
    c = pool.allocate("c", 1)
    assert c is not None and c.gpu_ids == (2,) and c.cpu_cores == (4, 5)
    pool.release("a")
    b = pool.allocate("b", 2)
    assert b is not None and set(b.gpu_ids) == {0, 1}
    assert not pool.can_ever_fit(4)


def test_cpu_machine_splits_its_cores_between_slots():
    pool = ResourcePool(gpus=[], cpu_slots=2, cpus=[0, 1, 2, 3])
    a = pool.allocate("a", 8)
    assert a is not None and a.cuda_visible_devices == "" and a.cpu_cores == (0, 1)
    b = pool.allocate("b", 1)
    assert b is not None and b.cpu_cores == (2, 3)
    assert pool.allocate("c", 1) is None
    pool.release("a")
    assert pool.allocate("c", 1).cpu_cores == (0, 1)
