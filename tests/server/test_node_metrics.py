"""Issue 19, the server's side: the engine's per-node `system` block and DiLoCo `round` block go
through the monitor (server/monitor.py) into node and round rows, come back from the services the
UI and the API read (metrics_service.latest_nodes / node_history / round_history) and in the
`training.progress` message, stay bounded, and never take an engine's stray keys or odd ids on
trust. Real databases (a SQLite file and this machine's PostgreSQL), the real monitor."""

from __future__ import annotations

import math
import time

import pytest
from sqlalchemy import func, select

from cotrain.db import make_db_factory, make_engine, run_migrations
from cotrain.server import node_samples
from cotrain.server.metrics_service import latest_nodes, node_history, round_history
from cotrain.server.orm import NodeSample, RoundPeerSample, RoundSample, TrainingSession
from tests.server.node_events import GIB, apply_events, node, progress, round_block


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'n.db'}"
    engine = make_engine(url)
    run_migrations(engine)
    factory = make_db_factory(engine)
    with factory.begin() as db:
        for sid in ("ddp", "diloco"):
            db.add(TrainingSession(id=sid, name=sid, description="", request={}, config_path="", config_toml="",
                                   model_type="llama2", model_size="debug", strategy=sid, latest_metrics={}))
    yield url, factory
    engine.dispose()


def test_each_node_of_a_ddp_run_is_kept_and_read_back_in_the_contracts_shape(database):
    url, factory = database
    t0 = time.time() - 100
    events = [progress(step, [node("node-0", t0 + step, gpus=2, cpu=50.0 + step), node("node-1", t0 + step)],
                       at=t0 + step) for step in range(2, 42, 2)]
    messages = apply_events(url, "ddp", events)

    progress_messages = [m for m in messages if m["event"] == "training.progress"]
    assert len(progress_messages) == 20
    system = progress_messages[-1]["data"]["system"]  # additive: the seed's fields are all still there
    assert {"progress", "loss", "participants", "metrics", "step"} <= set(progress_messages[-1]["data"])
    assert [n["node"] for n in system["nodes"]] == ["node-0", "node-1"]
    assert "gpus" not in system["nodes"][1]  # absent, not empty, without a GPU
    assert "round" not in progress_messages[-1]["data"]  # a DDP run has no rounds

    with factory.begin() as db:
        nodes = latest_nodes(db, "ddp")
        history = node_history(db, "ddp", max_points=500)
        rounds = round_history(db, "ddp")
    assert [n["node"] for n in nodes] == ["node-0", "node-1"]
    gpu_node, cpu_node = nodes
    assert gpu_node["step"] == 40 and gpu_node["cpu_percent"] == 90.0
    assert gpu_node["last_seen"] == pytest.approx(t0 + 40)
    assert gpu_node["ram_used_bytes"] == 12 * GIB and gpu_node["net_sent_bytes_per_s"] == 1.5e6
    assert gpu_node["disk_write_bytes_per_s"] == 4.0e6 and gpu_node["tokens_per_second"] == 1000.0
    assert [g["index"] for g in gpu_node["gpus"]] == [0, 1] and gpu_node["gpus"][1]["util_percent"] == 81.0
    assert gpu_node["gpus"][0]["mem_total_bytes"] == 141 * GIB and gpu_node["gpus"][0]["name"] == "NVIDIA H200"
    assert "gpus" not in cpu_node

    assert not history["downsampled"] and [n["node"] for n in history["nodes"]] == ["node-0", "node-1"]
    gpu_series, cpu_series = history["nodes"]
    assert gpu_series["total_points"] == 20 and len(gpu_series["points"]) == 20
    assert [p["step"] for p in gpu_series["points"]] == list(range(2, 42, 2))
    assert gpu_series["points"][-1]["gpu_util_percent"] == 80.5  # mean of the node's two GPUs
    assert gpu_series["points"][-1]["gpu_mem_used_bytes"] == 80 * GIB and gpu_series["points"][-1]["gpu_temp_c"] == 61.0
    assert not any(k.startswith("gpu_") for k in cpu_series["points"][0])  # no GPU: no GPU series at all
    assert cpu_series["points"][0]["net_recv_bytes_per_s"] == 2.5e6
    assert rounds["total_rounds"] == 0 and rounds["rounds"] == [] and rounds["latest"] is None

    with factory.begin() as db:
        downsampled = node_history(db, "ddp", max_points=10)
    assert downsampled["downsampled"]
    points = downsampled["nodes"][0]["points"]
    assert len(points) <= 10 and points[-1]["step"] == 40
    assert points[-1]["cpu_percent_max"] == 90.0 and isinstance(points[-1]["ram_used_bytes"], float)  # no Decimals


def test_diloco_rounds_merge_the_peers_reports_and_name_the_slowest(database):
    url, factory = database
    t0 = time.time()
    peers = ["12D3KooWAbc", "12D3KooWXyz"]
    events = [
        # this peer's own report of round 1 knows only itself; a second report adds the other peer
        progress(10, [node(peers[0], t0)], at=t0, round_=round_block(1, [(peers[0], 8.0)])),
        progress(12, [node(peers[0], t0 + 1), node(peers[1], t0 + 1)], at=t0 + 1,
                 round_=round_block(1, [(peers[1], 11.0)], train=8.0, averaging=2.0, wait=3.0)),
        progress(20, [node(peers[0], t0 + 20), node(peers[1], t0 + 20)], at=t0 + 20,
                 round_=round_block(2, [(peers[0], 9.0), (peers[1], 12.5)], slowest=peers[1])),
    ]
    messages = apply_events(url, "diloco", events)
    assert messages[-1]["data"]["round"]["round"] == 2 and messages[-1]["data"]["round"]["slowest_peer"] == peers[1]

    with factory.begin() as db:
        rounds = round_history(db, "diloco")
        nodes = latest_nodes(db, "diloco")
    assert [n["node"] for n in nodes] == peers
    assert rounds["total_rounds"] == 2 and not rounds["downsampled"]
    first, second = rounds["rounds"]
    assert first["round"] == 1 and first["wait_seconds"] == 3.0 and first["round_seconds"] == 13.0  # the later report
    assert {p["peer"]: p["train_seconds"] for p in first["peers"]} == {peers[0]: 8.0, peers[1]: 11.0}  # merged
    assert first["slowest_peer"] == peers[1]  # nobody named one: the peer that trained longest
    assert second["slowest_peer"] == peers[1] and rounds["slowest_peer"] == peers[1]
    assert rounds["latest"]["round"] == 2 and len(rounds["latest"]["peers"]) == 2
    assert second["train_seconds"] + second["averaging_seconds"] + second["wait_seconds"] == second["round_seconds"]
    assert rounds["peers"][0] == {"peer": peers[1], "rounds": 2, "train_seconds_mean": 11.75,
                                  "bytes_sent": 8_000_000, "bytes_received": 10_000_000, "slowest_rounds": 2}


def test_what_an_engine_relays_is_cleaned_before_it_is_kept(database):
    url, factory = database
    t0 = time.time()
    weird = node("host-a.example.org/../../etc node", t0)  # not a plain token: becomes node-<hash>
    leaky = node("node-0", t0, gpus=1)
    leaky.update(host="gpu-box-17.internal", hostname="gpu-box-17", cpu_percent=float("nan"), ram_used_bytes="lots")
    leaky["gpus"][0]["serial"] = "0423517000321"
    no_gpu = node("node-1", t0)
    no_gpu["gpus"] = []  # an engine that sends an empty list: still "no GPU"
    messages = apply_events(url, "ddp", [progress(2, [leaky, no_gpu, weird, {"cpu_percent": 3}, "junk"], at=t0,
                                                  round_=round_block(1, [("x" * 200, 1.0)], slowest="x" * 200))])
    sent = messages[-1]["data"]
    assert "'host'" not in repr(sent) and "gpu-box" not in repr(sent) and "serial" not in repr(sent)
    names = [n["node"] for n in sent["system"]["nodes"]]
    assert names[:2] == ["node-0", "node-1"] and len(names) == 3
    assert names[2].startswith("node-") and len(names[2]) == 15 and "/" not in names[2]
    assert sent["round"]["slowest_peer"] == sent["round"]["peers"][0]["peer"]
    assert len(sent["round"]["slowest_peer"]) == 15

    with factory.begin() as db:
        nodes = {n["node"]: n for n in latest_nodes(db, "ddp")}
    assert set(nodes) == set(names)
    # NaN, a string: dropped
    assert nodes["node-0"]["cpu_percent"] is None and nodes["node-0"]["ram_used_bytes"] is None
    assert set(nodes["node-0"]["gpus"][0]) == {"index", "name", "util_percent", "mem_used_bytes", "mem_total_bytes",
                                               "power_w", "temp_c"}
    assert "gpus" not in nodes["node-1"]


def test_a_long_run_keeps_a_bounded_number_of_rows_per_node_and_its_whole_shape(database, monkeypatch):
    url, factory = database
    cap = 40
    monkeypatch.setattr(node_samples, "MAX_SAMPLES_PER_NODE", cap)
    monkeypatch.setattr(node_samples, "MAX_NODES_PER_SESSION", 3)
    monkeypatch.setattr(node_samples, "MAX_ROUNDS_PER_SESSION", 20)
    t0 = time.time() - 1000
    steps = range(1, 301)
    events = [progress(s, [node(f"node-{i}", t0 + s, cpu=float(s % 100)) for i in range(5)], at=t0 + s,
                       round_=round_block(s, [("peer-a", 1.0 + s)])) for s in steps]
    apply_events(url, "ddp", events)

    with factory.begin() as db:
        per_node = dict(db.execute(select(NodeSample.node, func.count()).where(NodeSample.session_id == "ddp")
                                   .group_by(NodeSample.node)).all())
        kept_steps = list(db.scalars(select(NodeSample.step).where(NodeSample.node == "node-0")
                                     .order_by(NodeSample.step)))
        round_rows = db.scalar(select(func.count()).select_from(RoundSample))
        peer_rows = db.scalar(select(func.count()).select_from(RoundPeerSample))
        history = node_history(db, "ddp", max_points=500)
        rounds = round_history(db, "ddp")
    assert set(per_node) == {"node-0", "node-1", "node-2"}  # nodes past the cap are not stored
    assert all(cap // 2 <= n <= cap for n in per_node.values()), per_node
    assert kept_steps[0] == 1 and kept_steps[-1] == 300  # the first and the newest survive thinning
    assert kept_steps[-(cap // 2):] == list(range(300 - cap // 2 + 1, 301))  # the newest at full resolution
    assert len(history["nodes"]) == 3 and history["nodes"][0]["points"][0]["step"] == 1
    assert 10 <= round_rows <= 20 and peer_rows == round_rows
    assert rounds["rounds"][0]["round"] == 1 and rounds["latest"]["round"] == 300


def test_a_node_without_a_number_is_absent_not_zero(database):
    url, factory = database
    bare = {"node": "node-0", "time": time.time()}  # a first sample has no rates yet
    messages = apply_events(url, "ddp", [progress(2, [bare])])
    assert messages[-1]["data"]["system"]["nodes"] == [{"node": "node-0", "time": bare["time"]}]
    with factory.begin() as db:
        (only,) = latest_nodes(db, "ddp")
    assert only["net_sent_bytes_per_s"] is None and "gpus" not in only
    assert not math.isnan(only["time"])
