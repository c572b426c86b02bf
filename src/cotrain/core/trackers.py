"""TensorBoard, MLflow and Weights & Biases behind one small interface, for core/tracking.py.

Each tracker imports its package when it starts, so a missing package (the `tracking` extra not
installed), an unreachable server or a refused login is an exception at start: the fan-out
warns once and the run goes on without that tracker. Methods raise on failure the same way.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from cotrain.config.schema import TrackingConfig

# A run continues in the MLflow run of its session when it resumes from a checkpoint.
SESSION_TAG = "cotrain.session_id"
TITLE_TAG = "cotrain.session_name"  # the session's human title, when it has one
FINAL_MODEL_TAG = "final_model_path"
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow retries a failing request 7 times with exponential backoff and waits 120 s for an
# answer: minutes before a dead server counts as failed. Ours, unless the environment says.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
CONNECT_TIMEOUT_S = 5.0
MLFLOW_PARAM_CHARS = 6000  # MLflow's longest param value

Param = str | int | float | bool | None  # a flattened config value (core/tracking.py flatten)


@dataclass(frozen=True)
class RunInfo:
    name: str  # the run's name in every tracker
    session_id: str
    home: Path  # COTRAIN_HOME: the default place of local tracker files
    resumed: bool  # resumed from a checkpoint: continue the session's MLflow run
    title: str | None = None  # session.name


class Tracker(Protocol):
    name: str

    def params(self, params: dict[str, Param]) -> None: ...

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def final_model(self, path: str) -> None: ...

    def finish(self, status: str) -> None: ...  # "completed", "failed" or "interrupted"


def tensorboard_dir(config: TrackingConfig, run: RunInfo) -> Path:
    root = Path(config.tensorboard_dir) if config.tensorboard_dir else run.home / "logs" / "tensorboard"
    return root / run.name


def mlflow_uri(config: TrackingConfig, home: Path) -> str:
    return config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'logs' / 'mlflow.db'}"


class TensorBoardTracker:
    """Scalars under the engine's metric names, the config as hparams and as a text table."""

    name = "tensorboard"

    def __init__(self, config: TrackingConfig, run: RunInfo):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log_dir = tensorboard_dir(config, run)
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=10)

    def params(self, params: dict[str, Param]) -> None:
        from torch.utils.tensorboard.summary import hparams

        table = "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", table)
        values = {k: "None" if v is None else v for k, v in params.items()}
        file_writer = self.writer._get_file_writer()
        for summary in hparams(values, {})[:2]:  # the experiment and this run's values (the HPARAMS tab)
            file_writer.add_summary(summary)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def final_model(self, path: str) -> None:
        self.writer.add_text(FINAL_MODEL_TAG, path)

    def finish(self, status: str) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per session (tag cotrain.session_id), named after the run."""

    name = "mlflow"

    def __init__(self, config: TrackingConfig, run: RunInfo):
        self.uri = mlflow_uri(config, run.home)
        check_reachable(self.uri)
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient  # mlflow-skinny is enough

        self.client = MlflowClient(self.uri)
        experiment_id = self._experiment(config.mlflow_experiment)
        previous = self._session_run(experiment_id, run) if run.resumed else None
        if previous is not None:
            self.run_id = previous.info.run_id
            self.logged = dict(previous.data.params)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {SESSION_TAG: run.session_id, **({TITLE_TAG: run.title} if run.title else {})}
            created = self.client.create_run(experiment_id, run_name=run.name, tags=tags)
            self.run_id, self.logged = created.info.run_id, {}

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another session created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _session_run(self, experiment_id: str, run: RunInfo):
        runs = self.client.search_runs(  # session ids are [A-Za-z0-9._-]: safe inside quotes
            [experiment_id], filter_string=f"tags.`{SESSION_TAG}` = '{run.session_id}'",
            order_by=["attributes.start_time DESC"], max_results=20,
        )
        return next((r for r in runs if r.info.run_name == run.name), None)

    def params(self, params: dict[str, Param]) -> None:
        from mlflow.entities import Param as MlflowParam

        # MLflow refuses to change a logged param: a resumed run keeps the values it started with
        fresh = [MlflowParam(k, str(v)[:MLFLOW_PARAM_CHARS]) for k, v in params.items() if k not in self.logged]
        if fresh:
            self.client.log_batch(self.run_id, params=fresh)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def final_model(self, path: str) -> None:
        self.client.set_tag(self.run_id, FINAL_MODEL_TAG, path)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))


class WandbTracker:
    """A W&B run, offline by default: its folder under wandb_dir/wandb/, uploaded by `wandb sync`."""

    name = "wandb"

    def __init__(self, config: TrackingConfig, run: RunInfo):
        import wandb

        root = Path(config.wandb_dir or os.environ.get("WANDB_DIR") or run.home / "logs")
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=config.wandb_project,
            entity=config.wandb_entity,
            name=run.name,
            dir=str(root),
            mode=config.wandb_mode,
            tags=[f"session:{run.session_id}"[:64]],
            # the engine prints its own progress; W&B's console capture would copy it into the run
            settings=wandb.Settings(silent=True, console="off"),
        )

    def params(self, params: dict[str, Param]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def final_model(self, path: str) -> None:
        self.run.summary[FINAL_MODEL_TAG] = path

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)


TRACKERS: dict[str, type] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


def check_reachable(uri: str) -> None:
    """An http(s) tracking server must accept a connection within seconds: a closed port or a
    wrong host fails at once, instead of after MLflow's minutes of retries."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {uri} ({exc.strerror or exc})") from None
