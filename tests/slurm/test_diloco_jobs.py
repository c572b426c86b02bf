"""A DiLoCo session of two peers (`distributedConfig.nodes = 2`) on the Slurm executor runs as two jobs of
the real two-node test cluster: the session's engine, whose events the server follows, and a
`cotrain join`-equivalent peer with a COTRAIN_HOME of its own under the session's folder; both bootstrap
from the server's DHT and average in the same rounds. A cancel ends both jobs, and so does a worker that
finds the session's jobs orphaned."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from cotrain.server.slurm.jobs import cancel, job_state, submit
from cotrain.server.slurm.run import JobEntry, JobLedger
from tests.server.conftest import reference_session, server_env, servers, wait_until  # noqa: F401 (fixtures)
from tests.server.test_diloco_rewards import FAST_DILOCO
from tests.slurm.test_executor import SLURM, completed_jobs, finished, job_of, session

pytestmark = pytest.mark.slow
LOGIN = "slurm-login-1"  # the id of the `cotrain worker` of start(worker=True)


def diloco_session(name: str, steps: int) -> dict[str, Any]:
    body = reference_session(name=name)
    body["distributedConfig"].update(strategy="diloco", nodes=2, innerSteps=4)
    body["trainingConfig"].update(maxSteps=steps, batchSize=4, logInterval=4, evalInterval=steps)
    body["checkpointConfig"] = {"interval": 8}
    return body


def peer_jobs(home: Path, sid: str) -> list[str]:
    """The ids of the session's other peers' jobs (the worker's lines in the session's stdout)."""
    stdout = (home / "logs" / "training" / sid / "stdout.log").read_text()
    return re.findall(r"DiLoCo peer \d+ of \d+ is Slurm job (\d+)", stdout)


def rounds(events: Path) -> dict[int, int]:
    """A peer's averaged rounds from its event stream: outer step -> the size of the group it averaged in."""
    found = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "progress" and event.get("group_size") is not None:
            found[int(event["outer_step"])] = int(event["group_size"])
    return found


def start(servers, home: Path, body: dict[str, Any], worker: bool = False,  # noqa: F811
          started: list[Any] | None = None) -> tuple[httpx.Client, str]:
    """A server with its DHT running and the Slurm executor embedded (`worker`: a server without a DHT, and
    a `cotrain worker --executor slurm`); the session created on it (its data tokenized first, so the two
    peers do not both do it at once)."""
    if worker:
        api = servers(COTRAIN_EMBEDDED_WORKER="0", **FAST_DILOCO).client()
        (started if started is not None else []).append(servers("worker", **SLURM, **FAST_DILOCO,
                                                                 COTRAIN_WORKER_ID=LOGIN))
    else:
        api = servers(COTRAIN_START_DHT="1", **SLURM, **FAST_DILOCO).client()
    created = api.post("/sessions", json={**body, "autoStart": False})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    from cotrain.config import load_config
    from cotrain.core.data import prepare_dataset
    from cotrain.paths import Layout

    config = home / f"{sid}.toml"
    config.write_text(api.get(f"/sessions/{sid}/config").text)
    prepare_dataset(load_config(config).data, Layout(home).ensure())
    assert api.post(f"/sessions/{sid}/start").status_code == 200
    return api, sid


@pytest.mark.parametrize("runner", ["server", "worker"])
def test_a_two_peer_diloco_session_runs_as_two_jobs_that_average_together(slurm_cluster, servers,  # noqa: F811
                                                                           cotrain_home, runner):
    """runner "worker": no server DHT to bootstrap from, so the peer joins through the engine's address."""
    api, sid = start(servers, cotrain_home, diloco_session("two peers", 16), worker=runner == "worker")
    done = finished(api, sid, 300)
    assert done["status"] == "completed", (done["error"], api.get(f"/sessions/{sid}/logs").json())
    engine, peers = job_of(cotrain_home, sid), peer_jobs(cotrain_home, sid)
    assert len(peers) == 1 and peers[0] != engine
    ended = completed_jobs(slurm_cluster)
    assert re.search(rf"JobId={engine} .*Name=cotrain-{sid} ", ended), ended
    assert re.search(rf"JobId={peers[0]} .*Name=cotrain-{sid}-peer1 ", ended), ended
    # the peer is a peer of its own: its identity, checkpoints and events in its own COTRAIN_HOME
    peer_home = cotrain_home / "logs" / "training" / sid / "peers" / "peer1"
    identity = Path("models") / "checkpoints" / sid / "p2p-identity.key"
    assert (peer_home / identity).read_bytes() != (cotrain_home / identity).read_bytes()
    # both averaged in the same rounds, each a group of the two
    engine_rounds = rounds(cotrain_home / "logs" / "training" / sid / "events.jsonl")
    peer_rounds = rounds(peer_home / "logs" / "training" / sid / "events.jsonl")
    assert len(engine_rounds) >= 3 and set(engine_rounds.values()) == {2}, engine_rounds
    assert peer_rounds == engine_rounds
    joined_through_engine = "joining through the session's engine" in (peer_home / "stdout.log").read_text()
    assert joined_through_engine == (runner == "worker")


def test_cancel_ends_every_job_of_a_diloco_session(slurm_cluster, servers, cotrain_home):  # noqa: F811
    api, sid = start(servers, cotrain_home, diloco_session("cancelled peers", 4000))
    wait_until(lambda: (s := session(api, sid))["step"] >= 4 and s, 240, "a first round of the two peers")
    engine, peers = job_of(cotrain_home, sid), peer_jobs(cotrain_home, sid)
    assert len(peers) == 1
    assert job_state(engine).state == "RUNNING" and job_state(peers[0]).state == "RUNNING"
    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelling"
    done = finished(api, sid, 120)
    assert done["status"] == "cancelled"
    wait_until(lambda: job_state(engine).finished and job_state(peers[0]).finished, 60, "both jobs to end")
    # the peer went on until the engine had stopped, so the engine finished its round and saved a checkpoint
    assert "SIGKILL" not in (cotrain_home / "logs" / "training" / sid / "stderr.log").read_text()
    assert api.get(f"/sessions/{sid}/checkpoints").json()


def test_a_restarted_worker_reattaches_to_every_job_of_a_diloco_session(slurm_cluster, servers,  # noqa: F811
                                                                        cotrain_home):
    workers: list[Any] = []
    api, sid = start(servers, cotrain_home, diloco_session("outlives its worker", 4000), worker=True, started=workers)
    wait_until(lambda: session(api, sid)["step"] >= 4, 240, "a first round of the two peers")
    engine, peers = job_of(cotrain_home, sid), peer_jobs(cotrain_home, sid)
    workers[0].stop(signal.SIGKILL)
    assert job_state(engine).state == "RUNNING" and job_state(peers[0]).state == "RUNNING"

    again = servers("worker", **SLURM, **FAST_DILOCO, COTRAIN_WORKER_ID=LOGIN)
    wait_until(lambda: f"re-attaching to session {sid} (Slurm job {engine})" in again.log_path.read_text(), 60,
               "the worker to re-attach")
    ledger = JobLedger(cotrain_home, LOGIN)
    assert wait_until(lambda: ledger.entries(), 30, "the ledger entry") == [JobEntry(sid, engine, 1, peers)]
    assert api.post(f"/sessions/{sid}/cancel").json()["status"] == "cancelling"
    done = finished(api, sid, 120)
    assert done["status"] == "cancelled" and done["attempts"] == 1 and peer_jobs(cotrain_home, sid) == peers
    wait_until(lambda: job_state(engine).finished and job_state(peers[0]).finished, 60, "both jobs to end")


def job_times(cluster, job: str) -> tuple[str, str]:
    """(StartTime, EndTime) of an ended job, from the cluster's job-completion log."""
    found = re.search(rf"JobId={job} .*StartTime=(\S+) EndTime=(\S+)", completed_jobs(cluster))
    assert found, completed_jobs(cluster)
    return found[1], found[2]


def test_a_scancelled_engine_is_retried_with_new_peer_jobs_after_the_old_ones(slurm_cluster, servers,  # noqa: F811
                                                                              cotrain_home):
    api, sid = start(servers, cotrain_home, diloco_session("retried peers", 40))
    wait_until(lambda: [m for m in api.get(f"/sessions/{sid}/events").json() if m["event"] == "training.checkpoint"],
               240, "the first checkpoint")
    engine, peers = job_of(cotrain_home, sid), peer_jobs(cotrain_home, sid)
    cancel(engine)  # as an admin would
    done = finished(api, sid, 400)
    assert done["status"] == "completed", done["error"]
    assert done["attempts"] == 2
    retried, new_peers = job_of(cotrain_home, sid), peer_jobs(cotrain_home, sid)
    assert retried != engine and len(new_peers) == 2 and new_peers[0] == peers[0] and new_peers[1] not in peers
    # the first peer job had ended before the second one (same identity, same checkpoints) started
    wait_until(lambda: f"JobId={new_peers[1]} " in completed_jobs(slurm_cluster), 60, "the second peer job to end")
    assert job_times(slurm_cluster, new_peers[1])[0] >= job_times(slurm_cluster, peers[0])[1]


def test_an_orphaned_diloco_session_has_every_job_cancelled(slurm_cluster, tmp_path):
    """The ledger keeps a session's peers' jobs: a worker that comes back after the session moved on cancels
    them all (here: two jobs that would sleep for ten minutes)."""
    jobs = [submit("#!/bin/bash\nsleep 600\n", workdir=tmp_path, job_name=f"orphan-{n}",
                   output=tmp_path / f"{n}.log") for n in range(2)]
    ledger = JobLedger(tmp_path, "worker-a")
    ledger.record(JobEntry("s1", jobs[0], 1, [jobs[1]]))
    assert ledger.entries() == [JobEntry("s1", jobs[0], 1, [jobs[1]])]
    assert [entry.job_id for entry in ledger.end_orphans(set())] == [jobs[0]]
    wait_until(lambda: all(job_state(job).finished for job in jobs), 30, "both jobs to end")
    assert ledger.entries() == []
