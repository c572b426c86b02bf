"""Fans the run's events out to the experiment trackers of `[tracking]` (core/trackers.py).

The trainer's main process hands every event it emits to `Tracking.on_event`; a thread of its
own turns them into tracker calls, so a slow or unreachable tracker never holds up a step:
- started:   the config, flattened ("train.learning_rate"), as params
- progress:  every number it carries: loss, tokens_seen, epoch, and each of metrics{} (accuracy,
             learning_rate, tokens_per_second, grad_norm, ...), at its step
- eval:      val_loss, val_perplexity, val_accuracy, at its step
- completed: the final model path; completed / failed / interrupted end the tracker's run
A tracker that fails to start warns once on stderr and is left out; one that fails later warns
once and is dropped. Training never stops for a tracker.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from cotrain.config import CotrainConfig
from cotrain.config.schema import TrackingConfig
from cotrain.core.trackers import TRACKERS, Param, RunInfo, Tracker

BOOKKEEPING = frozenset({"seq", "time", "step", "total_steps", "progress"})  # numbers that are not metrics
CLOSE_TIMEOUT_S = 120.0  # at the end of the run, how long the trackers may take to send what is queued
INSTALL_HINT = "pip install 'cotrain[tracking]'"


def warn(message: str) -> None:
    print(f"warning: tracking: {message}", file=sys.stderr, flush=True)


def reason(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"its package is not installed ({exc.name or exc}); {INSTALL_HINT}"
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def metrics_of(event: dict[str, Any]) -> dict[str, float]:
    """Every finite number of a progress or eval event, under the event stream's names."""
    values = {k: v for k, v in event.items() if k not in BOOKKEEPING and _is_number(v)}
    values.update({k: v for k, v in (event.get("metrics") or {}).items() if _is_number(v)})
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Param]:
    """{"train": {"learning_rate": 3e-4, "betas": [0.9, 0.95]}} -> {"train.learning_rate": 3e-4,
    "train.betas": "[0.9, 0.95]"}: numbers, text, booleans and None stay; lists become JSON."""
    flat: dict[str, Param] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple):
            flat[f"{prefix}{key}"] = json.dumps(value)
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Tracking:
    """The trackers of one run, fed from a queue by one thread."""

    def __init__(self, config: TrackingConfig, run: RunInfo):
        self.config, self.run = config, run
        self.status = "failed"  # until a completed / failed event says otherwise
        self._events: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._deliver, name="cotrain-tracking", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, config: CotrainConfig, home: Path, *, resumed: bool) -> Tracking | None:
        """The run's trackers (None when `[tracking] backends` is empty)."""
        if not config.tracking.backends:
            return None
        session_id = config.session.id or "session"
        run = RunInfo(
            name=config.tracking.run_name or session_id, session_id=session_id, home=home, resumed=resumed,
            title=config.session.name,
        )
        return cls(config.tracking, run)

    def on_event(self, event: dict[str, Any]) -> None:
        self._events.put(event)

    def close(self) -> None:
        """Send what is queued, end every tracker's run; give up after CLOSE_TIMEOUT_S."""
        if not self._thread.is_alive():
            return
        self._events.put(None)
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            warn(f"the trackers did not finish sending within {CLOSE_TIMEOUT_S:.0f} s; the rest is lost")

    # --- the delivery thread ---------------------------------------------------------------
    def _deliver(self) -> None:
        trackers = self._open()
        while (event := self._events.get()) is not None:
            for tracker in list(trackers):
                try:
                    self._send(tracker, event)
                except Exception as exc:
                    warn(f"{tracker.name} failed ({reason(exc)}); the run goes on without it")
                    trackers.remove(tracker)
        for tracker in trackers:
            try:
                tracker.finish(self.status)
            except Exception as exc:
                warn(f"{tracker.name} could not end its run ({reason(exc)})")

    def _open(self) -> list[Tracker]:
        opened: list[Tracker] = []
        for name in dict.fromkeys(self.config.backends):  # each once, in order
            try:
                opened.append(TRACKERS[name](self.config, self.run))
            except Exception as exc:
                warn(f"{name} did not start ({reason(exc)}); the run goes on without it")
        return opened

    def _send(self, tracker: Tracker, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "started":
            tracker.params(flatten(event.get("config") or {}))
        elif kind in ("progress", "eval"):
            values = metrics_of(event)
            if values:
                tracker.metrics(int(event["step"]), values)
        elif kind == "completed":
            self.status = "completed"
            tracker.final_model(str(event["final_model_path"]))
        elif kind == "failed":
            self.status = "interrupted" if event.get("interrupted") else "failed"
