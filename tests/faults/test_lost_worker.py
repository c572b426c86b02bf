"""Lost workers (issue 18): a `cotrain worker` SIGKILLed with its machine, and one cut off from the
database that then comes back.

Two real `cotrain worker`s and a `cotrain up` API server (no embedded worker) share a PostgreSQL of
the test's own and one COTRAIN_HOME (the shared storage a fleet keeps checkpoints on). Box A runs
the session; once it has a checkpoint it is lost. After COTRAIN_HEARTBEAT_TIMEOUT box B re-queues
the session, claims it and resumes from the checkpoint. The session must complete once: every
engine event stored once by seq, one model version; and box A, back after being cut off, must not
write for the run it lost (fencing, server/run_lease.py). Each test prints the takeover time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.server.conftest import engine_pids, reference_session, wait_until

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT_S = 4


class CuttableProxy:
    """127.0.0.1:<port> forwarding to `target_port`; `cut()` closes every connection and refuses new
    ones (the worker's network to the database is gone), `restore()` lets them through again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def cut(self) -> None:
        self.cut_off = True
        with self._lock:
            doomed, self._open = self._open, []
        for sock in doomed:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


def messages(api, sid: str, event: str) -> list[dict[str, Any]]:
    stream = api.get(f"/sessions/{sid}/events", params={"limit": 10000}).json()
    return [m["data"] for m in stream if m["event"] == event]


def finished(api, sid: str) -> dict[str, Any]:
    return wait_until(lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s,
                      240, "the session to finish")


def resumed_on_b(api, sid: str) -> list[dict[str, Any]]:
    return [s for s in messages(api, sid, "training.status") if s.get("resumedFrom") and s.get("attempt", 0) >= 1]


def assert_ran_once(api, sid: str, home: Path) -> None:
    """Every progress event the engines wrote is stored once, in the order written; one model version."""
    on_disk = [json.loads(line) for line in (home / "logs" / "training" / sid / "events.jsonl").open()]
    seqs = [e["seq"] for e in on_disk]
    assert seqs == list(range(1, len(seqs) + 1)), "two engines wrote the stream at once"
    written = [(e["step"], round(e["loss"], 6)) for e in on_disk if e["type"] == "progress"]
    stored = [(m["step"], round(m["loss"], 6)) for m in messages(api, sid, "training.progress")]
    assert stored == written
    assert len(api.get("/models", params={"session": sid}).json()) == 1
    assert sum(1 for s in messages(api, sid, "training.status") if s["status"] == "completed") == 1


def start_on_box_a(servers, shared: dict[str, str], database_url: str, max_steps: int = 600):
    """The API server, box A (the only worker so far) running a session, and its first checkpoint; box A's engine
    is then frozen (SIGSTOP; the caller lets it go on with SIGCONT), so that however fast this machine trains,
    the run is still under way when box A is lost (the tiny model trains 600 steps in a few seconds)."""
    api = servers(**shared).client()
    box_a = servers("worker", **{**shared, "DATABASE_URL": database_url, "COTRAIN_WORKER_ID": "box-a"})
    body = reference_session()
    body["trainingConfig"]["maxSteps"] = max_steps
    body["checkpointConfig"]["interval"] = 20
    sid = api.post("/sessions", json=body).json()["id"]
    [engine] = wait_until(lambda: engine_pids(cotrain_home_of(box_a)), 60, "box-a's engine")
    wait_until(lambda: checkpoints(cotrain_home_of(box_a), sid), 180, "a checkpoint on box-a")
    os.kill(engine, signal.SIGSTOP)
    wait_until(lambda: messages(api, sid, "training.checkpoint"), 60, "box-a's checkpoint in the API")
    return api, box_a, sid, engine


def cotrain_home_of(server) -> Path:
    return server.home


def checkpoints(home: Path, sid: str) -> list[Path]:
    return sorted((home / "models" / "checkpoints" / sid).glob("step-*"))


@pytest.fixture
def shared(own_postgres) -> dict[str, str]:
    return {"DATABASE_URL": own_postgres.url, "COTRAIN_EMBEDDED_WORKER": "0",
            "COTRAIN_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S)}


def test_a_killed_worker_loses_its_session_to_another(servers, shared, cotrain_home):
    api, box_a, sid, _ = start_on_box_a(servers, shared, shared["DATABASE_URL"])
    servers("worker", **{**shared, "COTRAIN_WORKER_ID": "box-b"})
    box_a.stop(signal.SIGKILL)  # the machine is gone: the worker and its engine
    for pid in engine_pids(cotrain_home):
        os.killpg(pid, signal.SIGKILL)
    lost_at = time.monotonic()

    wait_until(lambda: resumed_on_b(api, sid), 120, "box-b to resume the session")
    print(f"\nkilled worker: box-b resumed the session {time.monotonic() - lost_at:.1f} s after box-a died "
          f"(COTRAIN_HEARTBEAT_TIMEOUT={HEARTBEAT_TIMEOUT_S})", flush=True)
    session = finished(api, sid)
    assert session["status"] == "completed", session["error"]
    statuses = messages(api, sid, "training.status")
    assert any("box-a stopped responding" in (s.get("error") or "") for s in statuses)
    assert resumed_on_b(api, sid)[-1]["step"] > 0
    assert_ran_once(api, sid, cotrain_home)


def test_a_worker_killed_alone_ends_the_engine_it_left_when_it_returns(servers, shared, cotrain_home):
    """Only the worker process dies: its engine (own process group) lives on. Frozen here, so that it
    cannot write next to box B's run while the test watches; box A, restarted after the takeover,
    must kill it (server/run_ledger.py) instead of leaving it on the machine."""
    api, box_a, sid, orphan = start_on_box_a(servers, shared, shared["DATABASE_URL"])
    servers("worker", **{**shared, "COTRAIN_WORKER_ID": "box-b"})
    box_a.stop(signal.SIGKILL)
    wait_until(lambda: resumed_on_b(api, sid), 120, "box-b to resume the session")
    assert engine_alive(orphan)

    back = servers("worker", **{**shared, "COTRAIN_WORKER_ID": "box-a"})
    wait_until(lambda: not engine_alive(orphan), 30, "box-a, back, to end the engine it left")
    assert f"pid {orphan}" in back.log_path.read_text()
    session = finished(api, sid)
    assert session["status"] == "completed", session["error"]
    assert_ran_once(api, sid, cotrain_home)


def test_a_worker_cut_off_from_the_database_is_fenced_when_it_returns(servers, shared, own_postgres, cotrain_home):
    proxy = CuttableProxy(own_postgres.port)
    try:
        via_proxy = re.sub(r":\d+/", f":{proxy.port}/", own_postgres.url)
        # long enough that box A's engine, let go on at the cut, is still training when box A stops it
        api, box_a, sid, engine_a = start_on_box_a(servers, shared, via_proxy, max_steps=1500)
        servers("worker", **{**shared, "COTRAIN_WORKER_ID": "box-b"})
        os.kill(engine_a, signal.SIGCONT)
        proxy.cut()
        cut_at = time.monotonic()

        # box A cannot renew its lease: it stops its own engine before the lease ends ...
        wait_until(lambda: not engine_alive(engine_a), 60, "box-a to stop its engine")
        stopped_s = time.monotonic() - cut_at
        # ... and box B takes the session over and resumes it from the checkpoint
        wait_until(lambda: resumed_on_b(api, sid), 120, "box-b to resume the session")
        print(f"\ncut-off worker: box-a stopped its engine {stopped_s:.1f} s after losing the database, box-b "
              f"resumed the session {time.monotonic() - cut_at:.1f} s after the cut "
              f"(COTRAIN_HEARTBEAT_TIMEOUT={HEARTBEAT_TIMEOUT_S})", flush=True)
        assert stopped_s < HEARTBEAT_TIMEOUT_S + 2

        proxy.restore()
        back_at = time.monotonic()
        fenced = wait_until(lambda: "no longer owns" in box_a.log_path.read_text(), 60, "box-a to find out")
        print(f"cut-off worker: box-a, back, dropped the run it lost {time.monotonic() - back_at:.1f} s after "
              "its database connection returned", flush=True)
        assert fenced
        session = finished(api, sid)
        assert session["status"] == "completed", session["error"]
        assert_ran_once(api, sid, cotrain_home)
        # box A's end of its stopped run (a failed attempt, a retry) never reached the row
        assert not any((s.get("error") or "").startswith("Attempt") for s in messages(api, sid, "training.status"))
        with create_engine(own_postgres.url.replace("postgresql://", "postgresql+psycopg://")).connect() as db:
            tails = db.execute(text("select distinct worker_id from session_log_tails where session_id = :s"),
                               {"s": sid}).scalars().all()
        assert tails == ["box-b"]  # box A's last tail write was fenced off
    finally:
        proxy.close()


def engine_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_lease_writes_only_while_its_worker_owns_the_attempt(tmp_path):
    """The ownership token is (worker_id, attempts): a re-queue or another worker's claim ends it."""
    from cotrain.db import open_database
    from cotrain.server.orm import SessionStatus, TrainingSession
    from cotrain.server.queue import claim_next
    from cotrain.server.run_lease import LostOwnership, RunLease

    engine, factory = open_database(f"sqlite:///{tmp_path / 'lease.db'}")
    with factory.begin() as db:
        db.add(TrainingSession(id="s1", name="s1", status=SessionStatus.QUEUED, request={}, config_path="",
                               config_toml="", model_type="llama2", model_size="debug", strategy="ddp",
                               queued_at=time.time(), latest_metrics={}))
    row = claim_next(factory, "box-a", lambda r: True)
    assert row is not None
    lease = RunLease("s1", "box-a", row.attempts)
    with factory.begin() as db:
        lease.hold(db).heartbeat_at = time.time()
    with factory.begin() as db:  # box B re-queues it (box A went silent) and claims it
        taken = db.get_one(TrainingSession, "s1")
        taken.status, taken.worker_id, taken.attempts = SessionStatus.QUEUED, None, taken.attempts - 1
    assert claim_next(factory, "box-b", lambda r: True) is not None
    with factory.begin() as db, pytest.raises(LostOwnership, match="box-a no longer owns attempt 1"):
        lease.hold(db)
    with factory.begin() as db:
        assert RunLease("s1", "box-b", 1).hold(db).worker_id == "box-b"
    engine.dispose()
