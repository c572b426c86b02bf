"""`cotrain doctor` and `cotrain join` as real commands on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cotrain.p2p.dht import start_dht, visible_maddrs
from cotrain.p2p.records import fetch_progress
from tests.conftest import PYTHON, engine_env, free_port, tiny_config

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def cotrain(*args: str, home: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "cotrain.cli", *args], env=engine_env(home, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def test_doctor_reports_a_working_p2p_stack(cotrain_home: Path):
    proc = cotrain("doctor", "--host-maddr", LOOPBACK, home=cotrain_home)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "[ok  ] p2p daemon" in out and "[ok  ] local DHT" in out
    assert "/ip4/127.0.0.1/tcp/" in out


def test_join_without_peers_says_what_to_do(cotrain_home: Path):
    proc = cotrain("join", "--session", "s", home=cotrain_home)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--initial-peers" in err


def test_join_with_an_unreachable_peer_is_one_sentence(cotrain_home: Path):
    nobody = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/QmUQWXKeTU7aVJbzjVMqZrXt4QMBAGsFU2ZmjL2bWZShxB"
    proc = cotrain("join", "--session", "s", "--initial-peers", nobody, home=cotrain_home)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err
    assert f"error: Could not start a DHT node with initial peers ['{nobody}']" in err
    assert "cotrain doctor" in err


@pytest.mark.slow
def test_join_trains_and_publishes_signed_progress_with_the_wallet(cotrain_home: Path, tmp_path: Path):
    bootstrap = start_dht()
    try:
        config = tiny_config(tmp_path / "volunteer.toml", "unused", max_steps=20, interval=20, log_interval=5)
        proc = cotrain(
            "join", "--initial-peers", visible_maddrs(bootstrap)[0], "--session", "volunteers",
            "--wallet", "0xabc123", "--config", str(config), "--host-maddr", LOOPBACK,
            "--set", "distributed.diloco.inner_steps=5", "--set", "distributed.diloco.matchmaking_time=1",
            "--set", "distributed.diloco.progress_interval=1",
            home=cotrain_home,
        )
        seen = []
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            seen = fetch_progress(bootstrap, "volunteers") or seen
            time.sleep(0.5)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
    finally:
        bootstrap.shutdown()
    assert seen and seen[0].wallet == "0xabc123" and seen[0].session_id == "volunteers"
    events = [json.loads(line) for line in
              (cotrain_home / "logs" / "training" / "volunteers" / "events.jsonl").read_text().splitlines()]
    outer = [e for e in events if e["type"] == "progress" and "outer_step" in e]
    assert [e["outer_step"] for e in outer] == [1, 2, 3, 4]  # alone, min_peers = 1: groups of one
    assert events[-1]["type"] == "completed"
