"""`cotrain join --server URL --session ID`: a volunteer takes the session's config and the server's
DHT peers from a real `cotrain up` and trains with the server's own engine; and every way the server
can refuse is one sentence from the CLI, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import engine_env, free_port
from tests.server.conftest import ADMIN_TOKEN, reference_session, wait_until

COTRAIN = str(Path(sys.executable).with_name("cotrain"))
FAST_DILOCO = {  # every peer's DiLoCo settings (config env overrides): loopback, records every second,
    # rounds that wait for the second peer (so the server's engine waits for the volunteer)
    "COTRAIN_DISTRIBUTED_DILOCO_HOST_MADDRS": '["/ip4/127.0.0.1/tcp/0"]',
    "COTRAIN_DISTRIBUTED_DILOCO_MIN_PEERS": "2",
    "COTRAIN_DISTRIBUTED_DILOCO_MATCHMAKING_TIME": "2.0",
    "COTRAIN_DISTRIBUTED_DILOCO_AVERAGING_TIMEOUT": "90.0",
    "COTRAIN_DISTRIBUTED_DILOCO_PROGRESS_INTERVAL": "1.0",
    "OMP_NUM_THREADS": "1",
}


def join(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`cotrain join ARGS` to its end (for the cases that stop before training)."""
    return subprocess.run([COTRAIN, "join", *args], capture_output=True, text=True, timeout=120,
                          env=engine_env(home, **env))


def refused(done: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """Exit 2 with one `error:` sentence containing `phrases`, and no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: "), done.stderr
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr
    return done.stderr


def test_join_refusals_are_sentences(servers, cotrain_home: Path):
    server = servers()  # COTRAIN_START_DHT=0: the server's DHT node is not running
    api = server.client()

    def create(strategy: str, public: bool = True) -> str:
        body = reference_session(autoStart=False, public=public)
        body["distributedConfig"].update(strategy=strategy, innerSteps=10)
        created = api.post("/sessions", json=body)
        assert created.status_code == 201, created.text
        return created.json()["id"]

    ddp, private = create("ddp"), create("diloco", public=False)
    down = f"http://127.0.0.1:{free_port()}"
    refused(join(cotrain_home, "--server", down, "--session", "s"), f"Could not reach the CoTrain server at {down}")
    refused(join(cotrain_home, "--server", "127.0.0.1:1", "--session", "s"), "is not a URL", "http://")
    refused(join(cotrain_home, "--server", server.url, "--session", "nosuch"), "no session 'nosuch'", "--token")
    refused(join(cotrain_home, "--server", server.url, "--session", ddp), "ddp strategy", "DiLoCo sessions only")
    # a private session: invisible without a token, refused with a wrong one, readable by its owner (the
    # admin here) - and then the next problem is the one this server has: no DHT node to join through
    refused(join(cotrain_home, "--server", server.url, "--session", private), f"no session '{private}'", "--token")
    refused(join(cotrain_home, "--server", server.url + "/", "--session", private, "--token", "ct_wrong"),
            "refused this token", "--token")
    refused(join(cotrain_home, "--server", server.url, "--session", private, COTRAIN_TOKEN=ADMIN_TOKEN),
            "no running DHT node", "hivemind/start", "--initial-peers")
    refused(join(cotrain_home, "--session", private), "--server", "--initial-peers")
    ended = create("diloco")
    assert api.post(f"/sessions/{ended}/cancel").status_code == 200
    assert api.get(f"/sessions/{ended}/join").json()["status"] == "cancelled"
    refused(join(cotrain_home, "--server", server.url, "--session", ended), f"Session {ended} is cancelled",
            "training has ended")


@pytest.mark.slow
def test_a_volunteer_joins_with_the_server_url_and_trains_with_the_server_engine(
    servers, cotrain_home: Path, shared_datasets: Path, tmp_path: Path
):
    server = servers(COTRAIN_START_DHT="1", **FAST_DILOCO)
    api = server.client()
    body = reference_session()
    body["distributedConfig"].update(strategy="diloco", innerSteps=5)
    body["trainingConfig"].update(maxSteps=20, logInterval=5, evalInterval=20)
    body["checkpointConfig"] = {"interval": 20}
    from cotrain.config import load_config  # tokenize once, before two peers would both do it
    from cotrain.core.data import prepare_dataset
    from cotrain.paths import Layout

    created = api.post("/sessions", json=body)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    config = tmp_path / "session.toml"
    config.write_text(api.get(f"/sessions/{sid}/config").text)
    prepare_dataset(load_config(config).data, Layout(cotrain_home).ensure())

    def peers() -> list[dict]:
        return api.get(f"/sessions/{sid}/participants").json()["peers"]

    # the server's engine is up and waiting in its first round for a second peer (min_peers = 2)
    engine_peer = wait_until(peers, 120, "the server's engine to publish its progress record")[0]["peer_id"]
    home = tmp_path / "volunteer"
    home.mkdir()
    (home / "datasets").symlink_to(shared_datasets, target_is_directory=True)
    log_path = tmp_path / "volunteer.log"
    with log_path.open("w") as log:
        volunteer = subprocess.Popen([COTRAIN, "join", "--server", server.url, "--session", sid, "--wallet", "0xabc"],
                                     env=engine_env(home, TOKENIZERS_PARALLELISM="false", **FAST_DILOCO),
                                     stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        both = wait_until(lambda: len(peers()) == 2 and peers(), 180, "the volunteer among the session's participants")
        assert {p["peer_id"] for p in both} > {engine_peer} and "0xabc" in {p.get("wallet") for p in both}
        assert volunteer.wait(300) == 0, log_path.read_text()[-3000:]
    finally:
        if volunteer.poll() is None:
            volunteer.kill()
            volunteer.wait()

    def outer_steps(events_path: Path) -> dict[int, dict]:
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
        return {e["outer_step"]: e for e in events if e["type"] == "progress" and "outer_step" in e}

    mine = outer_steps(home / "logs" / "training" / sid / "events.jsonl")
    session = wait_until(lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s,
                         120, "the session to finish")
    assert session["status"] == "completed", session["error"]
    theirs = outer_steps(cotrain_home / "logs" / "training" / sid / "events.jsonl")
    # the volunteer averaged every round with the server's engine: the same global params after each
    assert sorted(mine) == sorted(theirs) == [1, 2, 3, 4]
    for step, event in mine.items():
        assert event["group_size"] == 2 and event["params_hash"] == theirs[step]["params_hash"], (step, event)
    # it trained the session's model as the server configured it, and joined through the server's DHT
    started = next(json.loads(line) for line in (home / "logs" / "training" / sid / "events.jsonl").open()
                   if '"started"' in line)
    status = api.get("/hivemind/status").json()["data"]
    assert started["config"]["distributed"]["diloco"]["initial_peers"] == status["visible_addresses"]
    assert started["config"]["train"]["max_steps"] == 20 and started["config"]["session"]["id"] == sid
