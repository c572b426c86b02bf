"""DDP and FSDP with 2 real processes under torchrun (gloo on CPU), launched by `cotrain train`:
they train, only rank 0 writes, and a run resumed from a checkpoint continues exactly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cotrain.config import load_config
from cotrain.core.launch import torchrun_command
from tests.conftest import PYTHON, engine_env
from tests.distributed.engine import (
    checkpoint_dir,
    cotrain_train,
    events_of,
    losses,
    train_on_two_loopback_nodes,
    write_config,
)

TWO_PROCESSES = 'strategy = "{strategy}"\nnodes = 1\ngpus_per_node = 2\nbackend = "gloo"'


def _train_and_resume(strategy: str, home: Path, tmp_path: Path) -> None:
    full = write_config(tmp_path / f"{strategy}-full.toml", f"{strategy}-full", TWO_PROCESSES.format(strategy=strategy),
                        max_steps=24, interval=12)
    done = cotrain_train(full, home)
    assert done.returncode == 0, done.stderr[-3000:]
    events = events_of(home, f"{strategy}-full")
    started = events[0]
    assert started["type"] == "started" and started["world_size"] == 2
    assert sum(e["type"] == "started" for e in events) == 1  # rank 1 writes nothing
    progress = [e for e in events if e["type"] == "progress"]
    assert all(e["participants"] == 2 for e in progress)
    assert progress[-1]["bytes_sent"] > 0
    assert progress[-1]["loss"] < progress[0]["loss"]
    assert events[-1]["type"] == "completed"

    resumed_from = checkpoint_dir(home, f"{strategy}-full", 12)
    resumed = write_config(
        tmp_path / f"{strategy}-resumed.toml", f"{strategy}-resumed", TWO_PROCESSES.format(strategy=strategy),
        max_steps=24, interval=12,
    )
    again = cotrain_train(resumed, home, f"checkpoint.resume={resumed_from}")
    assert again.returncode == 0, again.stderr[-3000:]
    second = events_of(home, f"{strategy}-resumed")
    assert second[0]["step"] == 12 and second[0]["resumed_from"] == str(resumed_from)
    first_losses, second_losses = losses(events), losses(second)
    assert min(second_losses) == 14
    for step, loss in second_losses.items():
        assert loss == pytest.approx(first_losses[step], rel=1e-4, abs=1e-5), step
    assert second[-1]["val_loss"] == pytest.approx(events[-1]["val_loss"], rel=1e-4)



def _resume_alone(strategy: str, home: Path, tmp_path: Path) -> None:
    """The checkpoint is a full, unsharded one: a single process resumes it too."""
    alone = write_config(tmp_path / f"{strategy}-alone.toml", f"{strategy}-alone", "", max_steps=24, interval=12)
    single = cotrain_train(alone, home, f"checkpoint.resume={checkpoint_dir(home, f'{strategy}-full', 12)}")
    assert single.returncode == 0, single.stderr[-3000:]
    events = events_of(home, f"{strategy}-alone")
    assert events[0]["step"] == 12 and events[0]["world_size"] == 1 and events[-1]["type"] == "completed"


@pytest.mark.slow
def test_ddp_two_processes_train_and_resume(cotrain_home: Path, tmp_path: Path):
    _train_and_resume("ddp", cotrain_home, tmp_path)


@pytest.mark.slow
def test_fsdp_two_processes_train_and_resume_also_on_one(cotrain_home: Path, tmp_path: Path):
    _train_and_resume("fsdp", cotrain_home, tmp_path)
    _resume_alone("fsdp", cotrain_home, tmp_path)


def test_torchrun_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    config_path = write_config(tmp_path / "c.toml", "c", TWO_PROCESSES.format(strategy="ddp"))
    config = load_config(config_path)
    cmd = torchrun_command(config, config_path, ["train.max_steps=5"])
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert cmd[-4:] == ["--config", str(config_path), "--set", "train.max_steps=5"]

    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("NODE_RANK", "1")
    multi = load_config(config_path, overrides=["distributed.nodes=2", "train.batch_size=8"])
    cmd = torchrun_command(multi, config_path, [])
    assert "--nnodes" in cmd and cmd[cmd.index("--rdzv-endpoint") + 1] == "10.0.0.1:29500"
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"

    # a DiLoCo peer with 2 GPUs: its own processes only, never a rendezvous (peers meet over the DHT)
    as_diloco = ["distributed.strategy=diloco", "distributed.nodes=3", "distributed.diloco.inner_steps=5"]
    diloco = load_config(config_path, overrides=as_diloco)
    cmd = torchrun_command(diloco, config_path, [])
    assert "--standalone" in cmd and "--nnodes" not in cmd and cmd[cmd.index("--nproc-per-node") + 1] == "2"
    one_gpu = load_config(config_path, overrides=[*as_diloco, "distributed.gpus_per_node=1"])
    assert torchrun_command(one_gpu, config_path, []) is None

    monkeypatch.setenv("LOCAL_RANK", "0")  # already under torchrun: never launch again
    assert torchrun_command(config, config_path, []) is None
    single = load_config(config_path, overrides=["distributed.gpus_per_node=1"])
    monkeypatch.delenv("LOCAL_RANK")
    assert torchrun_command(single, config_path, []) is None


@pytest.mark.slow
def test_two_nodes_meet_at_a_c10d_rendezvous(cotrain_home: Path, shared_datasets: Path, tmp_path: Path):
    """Multi-node as a user runs it: the same `cotrain train FILE` on every node with MASTER_ADDR,
    MASTER_PORT and NODE_RANK set; here two "nodes" with their own COTRAIN_HOME on loopback."""
    config = write_config(tmp_path / "two-nodes.toml", "two-nodes",
                          'strategy = "ddp"\nnodes = 2\ngpus_per_node = 1\nbackend = "gloo"', max_steps=12, interval=12)
    _, second_home = train_on_two_loopback_nodes(config, cotrain_home, shared_datasets, tmp_path)
    # the rendezvous, not NODE_RANK, decides which node holds global rank 0: that one writes, alone
    written = [events_of(home, "two-nodes") for home in (cotrain_home, second_home)]
    assert sorted(bool(events) for events in written) == [False, True], written
    events = next(events for events in written if events)
    assert events[0]["type"] == "started" and events[0]["world_size"] == 2
    assert all(e["participants"] == 2 for e in events if e["type"] == "progress")
    assert events[-1]["type"] == "completed" and events[-1]["step"] == 12


def running_with(config: Path) -> list[int]:
    """Live processes whose command line names `config`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(config).encode() in (proc / "cmdline").read_bytes():
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def wait_until_none_left(config: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while running_with(config):
        assert time.monotonic() < deadline, f"left running: {running_with(config)}"
        time.sleep(0.2)


def kill_all_with(config: Path) -> None:
    for pid in running_with(config):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for_training(home: Path, session: str, proc: subprocess.Popen) -> None:
    """Until the run's first progress event (it fails if `proc` exits first)."""
    deadline = time.monotonic() + 180
    while not any(e["type"] == "progress" for e in events_of(home, session)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)


@pytest.mark.slow
def test_killing_the_launcher_stops_torchrun_and_its_ranks_with_a_checkpoint(cotrain_home: Path, tmp_path: Path):
    """`cotrain train` killed with SIGKILL (an OOM killer, a closed terminal's kill -9): torchrun gets
    SIGTERM from Linux, its ranks save a checkpoint and leave; nothing trains on as an orphan."""
    config = write_config(tmp_path / "orphan.toml", "orphan", TWO_PROCESSES.format(strategy="ddp"),
                          max_steps=100_000, interval=100_000)
    launcher = subprocess.Popen([PYTHON, "-m", "cotrain.cli", "train", str(config)], start_new_session=True,
                                env=engine_env(cotrain_home, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_training(cotrain_home, "orphan", launcher)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        wait_until_none_left(config, timeout=60)  # torchrun and its ranks (in sessions of their own)
    finally:
        kill_all_with(config)
    last = events_of(cotrain_home, "orphan")[-1]
    assert last["type"] == "failed" and last["interrupted"] and last["signal"] == "SIGTERM", last
    assert checkpoint_dir(cotrain_home, "orphan", last["step"]).is_dir()


@pytest.mark.slow
def test_ranks_die_with_a_killed_torchrun(cotrain_home: Path, tmp_path: Path):
    """torchrun SIGKILLed (the server's cancel after its grace period kills the run's process group):
    its ranks, which torchrun starts in sessions of their own, must not train on."""
    config = write_config(tmp_path / "headless.toml", "headless", TWO_PROCESSES.format(strategy="ddp"),
                          max_steps=100_000, interval=100_000)
    torchrun = subprocess.Popen(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cotrain.core.train",
         "--config", str(config)],
        env=engine_env(cotrain_home, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_training(cotrain_home, "headless", torchrun)
        assert len(running_with(config)) == 3  # torchrun and two ranks
        os.killpg(torchrun.pid, signal.SIGKILL)
        torchrun.wait()
        wait_until_none_left(config, timeout=30)
    finally:
        kill_all_with(config)
