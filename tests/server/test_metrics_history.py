"""Metric history of a long run is downsampled in the database: at most `max_points` buckets,
each with mean, min and max, so a chart keeps the shape (a one-step spike survives)."""

from __future__ import annotations

import math
import time

from sqlalchemy import insert

from cotrain.db import make_db_factory, make_engine, run_migrations
from cotrain.server.metrics_service import metric_history
from cotrain.server.orm import MetricPoint, TrainingSession


def test_a_long_run_comes_back_as_a_few_hundred_points_with_its_spike(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    run_migrations(engine)
    factory = make_db_factory(engine)
    steps = 200_000
    with factory.begin() as db:
        db.add(TrainingSession(id="long", name="long", description="", request={}, config_path="", config_toml="",
                               model_type="llama2", model_size="debug", strategy="ddp", latest_metrics={}))
    rows = [{"session_id": "long", "step": s, "time": float(s), "loss": 10 * math.exp(-s / 50_000),
             "participants": 1 + s // 50_000} for s in range(1, steps + 1)]  # a peer joins every 50,000 steps
    rows[123_456]["loss"] = 99.0  # one bad step
    with engine.begin() as conn:
        conn.execute(insert(MetricPoint), rows)

    with factory.begin() as db:
        began = time.perf_counter()
        history = metric_history(db, "long", max_points=500)
        took = time.perf_counter() - began
    points = history["points"]
    assert history["downsampled"] and history["total_points"] == steps
    assert 450 <= len(points) <= 500
    assert points[0]["loss"] > points[-1]["loss"]  # the curve still goes down
    assert max(p["loss_max"] for p in points) == 99.0  # the spike is kept by its bucket's max
    assert points[-1]["step"] == steps
    assert points[0]["participants"] == 1 and points[-1]["participants_max"] == 5  # peers over time
    print(f"downsampled {steps} points to {len(points)} in {took * 1000:.0f} ms")
