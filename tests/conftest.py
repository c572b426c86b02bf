"""Fixtures shared by every area's tests: an isolated COTRAIN_HOME per test, with the prepared
datasets folder shared across the run (it is keyed by content, so sharing is safe and saves the
tokenizer training each test would otherwise repeat)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# The original design's reference examples. CI and developers have ../shared beside the clone;
# tests/reference holds a copy (checked identical below) so a lone clone still tests them.
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
REFERENCE = SHARED_REFERENCE if SHARED_REFERENCE.is_dir() else REPO / "tests" / "reference"
PYTHON = sys.executable

# One intra-op thread in every process the suite starts (engines of servers, peers, Slurm jobs) and in pytest's
# own torch: `make test` runs two lanes on two cores, where each process's second OpenMP thread only spins against
# the other lane's work. The tiny-cpu template run took 298 CPU s (290 s) under the suite's load with torch's
# default threads, and 95 CPU s with one thread on an idle machine (116 with two). The models tests train are
# too small for a second thread to matter. A test that needs another count sets it in its process's env.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tiny, fast settings for runs of the real engine in tests.
TINY_TOML = """
[session]
id = "{session}"

[model]
type = "{model_type}"
size = "debug"
precision = "fp32"

[train]
batch_size = 8
max_steps = {max_steps}
learning_rate = 3e-3
log_interval = {log_interval}
eval_interval = 20
eval_batches = 4
deterministic = true

[data]
dataset = "stdlib"
max_bytes = 300000
seq_length = 64
vocab_size = 512

[checkpoint]
interval = {interval}
"""


def tiny_config(
    path: Path, session: str = "tiny", *, model_type: str = "llama2", max_steps: int = 40,
    interval: int = 10, log_interval: int = 1, extra: str = "",
) -> Path:
    path.write_text(
        TINY_TOML.format(
            session=session, model_type=model_type, max_steps=max_steps, interval=interval, log_interval=log_interval
        )
        + extra
    )
    return path


@pytest.fixture(scope="session")
def shared_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture
def cotrain_home(tmp_path: Path, shared_datasets: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh COTRAIN_HOME whose datasets/ is the run-wide shared one."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "datasets").symlink_to(shared_datasets, target_is_directory=True)
    monkeypatch.setenv("COTRAIN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return home


def engine_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COTRAIN_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


def missing_service(message: str) -> None:
    """A service or tool a test needs is absent: skip with the reason on a developer's machine,
    fail under CI=true, where everything the suite needs must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: required)")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def terminate(proc: subprocess.Popen[Any], grace: float = 30) -> None:
    """Stop a process the tests started: SIGTERM (it shuts down cleanly), SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
