"""Experiment trackers for real: tiny `cotrain.core.train` runs whose curves, config and final model
path are read back with each tracker's own reader: TensorBoard's EventAccumulator, MLflow's client
against a real `mlflow server` (SQLite backend, loopback port, one per module), and W&B's offline
run file. A tracker that cannot start, or that goes away mid-run, warns once; the run completes."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cotrain.config import ConfigError, load_config
from tests.conftest import PYTHON, engine_env, free_port, tiny_config
from tests.trackers import mlflow_history, mlflow_run, running_mlflow_server

TRACKING = """
[tracking]
backends = {backends}
mlflow_uri = "{mlflow_uri}"
mlflow_experiment = "tracking-tests"
"""


# ---- a real MLflow server, once per module -------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


# ---- the engine's own record of the run ----------------------------------------------------------
def run_engine(config: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "cotrain.core.train", "--config", str(config)],
        capture_output=True, text=True, env=engine_env(home, **env), timeout=600,
    )


def events_of(home: Path, session: str) -> list[dict[str, Any]]:
    lines = (home / "logs" / "training" / session / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def series(events: list[dict[str, Any]], kind: str, key: str) -> dict[int, float]:
    return {e["step"]: (e["metrics"] if key in e.get("metrics", {}) else e)[key] for e in events if e["type"] == kind}


def leaf_count(config: dict[str, Any]) -> int:
    return sum(leaf_count(v) if isinstance(v, dict) else 1 for v in config.values())


def tracker_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: tracking:")]


# ---- TensorBoard's and W&B's own files ----------------------------------------------------------
def tensorboard_run(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(log_dir.glob("events.out.tfevents.*")), f"no TensorBoard event file in {log_dir}"
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def tb_scalars(accumulator: Any, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in accumulator.Scalars(tag)}


def tb_text(accumulator: Any, tag: str) -> str:
    return accumulator.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The protobuf records of a .wandb file: W&B's LevelDB-style log (a 7-byte header, then
    32 KiB blocks of chunks: crc32, length, type (1 full, 2 first, 3 middle, 4 last))."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


# ---- the tests -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_run_reaches_tensorboard_mlflow_and_wandb(mlflow_server: str, cotrain_home: Path, tmp_path: Path):
    extra = TRACKING.format(backends='["tensorboard", "mlflow", "wandb"]', mlflow_uri=mlflow_server)
    config = tiny_config(tmp_path / "tracked.toml", "tracked", max_steps=30, interval=30, log_interval=5, extra=extra)
    wandb_dir = tmp_path / "wandb-dir"
    result = run_engine(config, cotrain_home, WANDB_DIR=str(wandb_dir), WANDB_MODE="offline")
    assert result.returncode == 0, result.stderr[-3000:]
    assert tracker_warnings(result.stderr) == []

    events = events_of(cotrain_home, "tracked")
    losses, lrs = series(events, "progress", "loss"), series(events, "progress", "learning_rate")
    val_losses = series(events, "eval", "val_loss")
    assert sorted(losses) == [5, 10, 15, 20, 25, 30] and sorted(val_losses) == [20, 30]
    final_path = events[-1]["final_model_path"]
    config_keys = leaf_count(events[0]["config"])

    # TensorBoard: COTRAIN_HOME/logs/tensorboard/<session>, read with tensorboard's own reader
    board = tensorboard_run(cotrain_home / "logs" / "tensorboard" / "tracked")
    assert tb_scalars(board, "loss") == pytest.approx(losses, rel=1e-6)
    assert tb_scalars(board, "learning_rate") == pytest.approx(lrs, rel=1e-6)
    assert tb_scalars(board, "val_loss") == pytest.approx(val_losses, rel=1e-6)
    scalar_tags = set(board.Tags()["scalars"])
    assert {"accuracy", "tokens_per_second", "grad_norm", "val_perplexity", "val_accuracy"} <= scalar_tags
    assert tb_text(board, "final_model_path") == final_path
    assert "| train.learning_rate | 0.003 |" in tb_text(board, "config")
    assert "_hparams_/session_start_info" in board.PluginTagToContent("hparams")

    # MLflow: the run tagged with the session, through MLflow's client
    run = mlflow_run(mlflow_server, "tracked")
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert mlflow_history(mlflow_server, run.info.run_id, "loss") == pytest.approx(losses)
    assert mlflow_history(mlflow_server, run.info.run_id, "val_loss") == pytest.approx(val_losses)
    logged = run.data.metrics.keys()
    assert {"learning_rate", "tokens_per_second", "accuracy", "val_perplexity", "val_accuracy"} <= logged
    params = run.data.params
    assert len(params) == config_keys
    assert params["train.learning_rate"] == "0.003" and params["data.seq_length"] == "64"
    assert params["model.type"] == "llama2"
    assert json.loads(params["tracking.backends"]) == ["tensorboard", "mlflow", "wandb"]
    assert run.data.tags["final_model_path"] == final_path

    # W&B, offline: WANDB_DIR/wandb/offline-run-*/run-<id>.wandb, its records read back
    [run_file] = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[int, dict[str, float]] = {}
    summary: dict[str, Any] = {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            assert record.run.display_name == "tracked" and record.run.project == "cotrain"
            wandb_config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
    assert {step: row["loss"] for step, row in history.items() if "loss" in row} == pytest.approx(losses)
    assert {step: row["val_loss"] for step, row in history.items() if "val_loss" in row} == pytest.approx(val_losses)
    assert summary["final_model_path"] == final_path
    config_records = [r for r in wandb_records(run_file) if r.WhichOneof("record_type") == "config"]
    for record in config_records:
        wandb_config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert wandb_config["train.learning_rate"] == 0.003 and wandb_config["data.seq_length"] == 64


@pytest.mark.slow
def test_a_tracker_that_cannot_start_warns_once_and_the_run_completes(cotrain_home: Path, tmp_path: Path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    extra = TRACKING.format(backends='["mlflow", "tensorboard"]', mlflow_uri=closed)
    config = tiny_config(tmp_path / "closed.toml", "closed", max_steps=20, interval=20, log_interval=5, extra=extra)
    started = time.monotonic()
    result = run_engine(config, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 120  # not MLflow's minutes of retries
    [warning] = tracker_warnings(result.stderr)
    assert "mlflow did not start" in warning and closed in warning and "the run goes on without it" in warning
    assert "Traceback" not in result.stderr
    events = events_of(cotrain_home, "closed")
    assert events[-1]["type"] == "completed"
    board = tensorboard_run(cotrain_home / "logs" / "tensorboard" / "closed")  # the other tracker is unharmed
    assert tb_scalars(board, "loss") == pytest.approx(series(events, "progress", "loss"), rel=1e-6)


class CuttingProxy:
    """A TCP relay to the MLflow server that goes away for good when a request asks for `path` the
    `nth` time (before relaying it): a tracking server lost in the middle of a run."""

    def __init__(self, target_port: int, path: bytes, nth: int):
        self.target_port, self.path, self.nth = target_port, path, nth
        self.seen = 0
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if requests and self.path in data:
                with self.lock:
                    self.seen += data.count(self.path)
                    if self.seen >= self.nth:
                        self.close()
                        return
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.cut.set()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.mark.slow
def test_a_tracker_that_fails_mid_run_warns_once_and_is_dropped(mlflow_server: str, cotrain_home: Path, tmp_path: Path):
    # the 1st log-batch carries the params, the 2nd the first metrics: the server goes away at the 3rd
    proxy = CuttingProxy(int(mlflow_server.rsplit(":", 1)[1]), b"/runs/log-batch", nth=3)
    extra = TRACKING.format(backends='["mlflow", "tensorboard"]', mlflow_uri=f"http://127.0.0.1:{proxy.port}")
    config = tiny_config(tmp_path / "lost.toml", "lost", max_steps=30, interval=30, log_interval=5, extra=extra)
    try:
        result = run_engine(config, cotrain_home)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr[-3000:]
    [warning] = tracker_warnings(result.stderr)  # once, though every later event would fail too
    assert warning.startswith("warning: tracking: mlflow failed (") and "the run goes on without it" in warning
    events = events_of(cotrain_home, "lost")
    assert events[-1]["type"] == "completed"
    run = mlflow_run(mlflow_server, "lost")
    last_logged = {5: series(events, "progress", "loss")[5]}
    assert mlflow_history(mlflow_server, run.info.run_id, "loss") == pytest.approx(last_logged)
    assert run.info.status == "RUNNING"  # nothing reached it after the cut
    board = tensorboard_run(cotrain_home / "logs" / "tensorboard" / "lost")
    assert sorted(tb_scalars(board, "loss")) == [5, 10, 15, 20, 25, 30]


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_curve(mlflow_server: str, cotrain_home: Path,
                                                                      tmp_path: Path):
    extra = TRACKING.format(backends='["mlflow", "tensorboard"]', mlflow_uri=mlflow_server)
    first = tiny_config(tmp_path / "resumed.toml", "resumed", max_steps=20, interval=10, log_interval=5, extra=extra)
    assert run_engine(first, cotrain_home).returncode == 0
    longer = tiny_config(tmp_path / "resumed.toml", "resumed", max_steps=30, interval=10, log_interval=5, extra=extra)
    result = run_engine(longer, cotrain_home)  # resumes from step 20's checkpoint
    assert result.returncode == 0, result.stderr[-3000:]
    assert tracker_warnings(result.stderr) == []
    events = events_of(cotrain_home, "resumed")
    run = mlflow_run(mlflow_server, "resumed")  # still one run
    assert run.info.status == "FINISHED"
    assert mlflow_history(mlflow_server, run.info.run_id, "loss") == pytest.approx(series(events, "progress", "loss"))
    assert run.data.params["train.max_steps"] == "20"  # MLflow keeps a param's first value
    board = tensorboard_run(cotrain_home / "logs" / "tensorboard" / "resumed")
    assert sorted(tb_scalars(board, "loss")) == [5, 10, 15, 20, 25, 30]


# ---- the config -----------------------------------------------------------------------------------
def test_tracking_config_defaults_and_forms():
    config = load_config(data={})
    assert config.tracking.backends == [] and config.tracking.wandb_mode == "offline"
    from_text = load_config(data={"tracking": {"backends": "tensorboard, mlflow"}})
    assert from_text.tracking.backends == ["tensorboard", "mlflow"]
    assert load_config(environ={"COTRAIN_TRACKING_BACKENDS": "wandb"}).tracking.backends == ["wandb"]
    with pytest.raises(ConfigError) as refused:
        load_config(data={"tracking": {"backends": ["neptune"]}})
    assert "tracking.backends.0" in str(refused.value) and "'tensorboard', 'mlflow' or 'wandb'" in str(refused.value)


def test_tracking_warns_when_its_package_is_missing(cotrain_home: Path, tmp_path: Path):
    """No training: the trackers alone, in a process where `wandb` cannot be imported."""
    blocked = tmp_path / "blocked" / "wandb"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("wandb is not installed here", name="wandb")\n')
    script = (
        "from pathlib import Path\n"
        "from cotrain.config import load_config\n"
        "from cotrain.core.tracking import Tracking\n"
        "config = load_config(data={'session': {'id': 'nopkg'}, 'tracking': {'backends': ['wandb', 'tensorboard']}})\n"
        "tracking = Tracking.start(config, Path.cwd(), resumed=False)\n"
        "tracking.on_event({'type': 'progress', 'step': 1, 'loss': 2.5, 'metrics': {'accuracy': 0.5}})\n"
        "tracking.on_event({'type': 'completed', 'step': 1, 'final_model_path': '/m'})\n"
        "tracking.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(blocked.parent)}  # before site-packages
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    [warning] = tracker_warnings(result.stderr)
    assert "wandb did not start (its package is not installed (wandb); pip install 'cotrain[tracking]')" in warning
    board = tensorboard_run(tmp_path / "logs" / "tensorboard" / "nopkg")
    assert tb_scalars(board, "loss") == {1: 2.5} and tb_text(board, "final_model_path") == "/m"
