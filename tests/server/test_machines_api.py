"""Issue 19 on a real server: a tiny session runs on the real engine; its nodes' system metrics
(from the engine's own `system` blocks, once it samples them, and from contract-shaped events the
monitor applies to the same database, as the executor does) come back from
GET /api/v1/sessions/{id}/nodes and /rounds, and GET /metrics exports them with bounded labels."""

from __future__ import annotations

import json
import re
import time

import httpx

from cotrain.server import node_metrics
from tests.server.conftest import reference_session, wait_until
from tests.server.node_events import apply_events, node, progress, round_block

SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def samples(text: str, prefix: str = "cotrain_") -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"].startswith(prefix):
            out.append((match["name"], dict(LABEL.findall(match["labels"])), float(match["value"])))
    return out


def test_a_sessions_machines_come_back_from_the_api_and_from_metrics(servers, cotrain_home):
    server = servers()
    api = server.client()
    created = api.post("/sessions", json=reference_session(name="machines"))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    done = wait_until(lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed") and s,
                      240, "the session to finish")
    assert done["status"] == "completed", done["error"]

    # what the engine itself reported per node, read from the run's event stream
    stream = cotrain_home / "logs" / "training" / sid / "events.jsonl"
    events = [json.loads(line) for line in stream.read_text().splitlines() if line.strip()]
    engine_nodes = {n["node"] for e in events if e["type"] == "progress" and e.get("system")
                    for n in e["system"]["nodes"]}
    print(f"nodes the engine reported: {sorted(engine_nodes)}")
    nodes = api.get(f"/sessions/{sid}/nodes")
    assert nodes.status_code == 200, nodes.text
    assert {n["node"] for n in nodes.json()["nodes"]} == engine_nodes
    for sample in nodes.json()["nodes"]:  # a one-process CPU run on this machine
        assert sample["ram_used_bytes"] > 0 and sample["ram_total_bytes"] >= sample["ram_used_bytes"]
        assert sample["net_sent_bytes_per_s"] >= 0 and sample["disk_write_bytes_per_s"] >= 0
        assert sample["process_rss_bytes"] > 0 and sample["last_seen"] >= done_time(done)
    if engine_nodes:
        history = nodes.json()["history"]
        assert history and all(len(n["points"]) >= 5 for n in history)  # one point per log interval

    # two more machines and two DiLoCo rounds, in the contract's shape, through the monitor
    url = f"sqlite:///{cotrain_home / 'cotrain.db'}"
    now = time.time()
    apply_events(url, sid, [
        progress(40, [node("node-1", now, gpus=2), node("node-2", now)], round_=round_block(1, [("node-1", 8.0)])),
        progress(40, [node("node-1", now + 5, gpus=2, cpu=75.0), node("node-2", now + 5)],
                 round_=round_block(2, [("node-1", 8.0), ("node-2", 12.0)], slowest="node-2")),
    ])
    body = api.get(f"/sessions/{sid}/nodes").json()
    by_node = {n["node"]: n for n in body["nodes"]}
    assert body["sessionId"] == sid and {"node-1", "node-2"} <= set(by_node)
    assert by_node["node-1"]["cpu_percent"] == 75.0 and len(by_node["node-1"]["gpus"]) == 2
    assert "gpus" not in by_node["node-2"]
    series = {n["node"]: n for n in body["history"]}
    assert [p["cpu_percent"] for p in series["node-1"]["points"]] == [40.0, 75.0]
    coarse = api.get(f"/sessions/{sid}/nodes", params={"maxPoints": 10}).json()
    assert all(len(n["points"]) <= 10 for n in coarse["history"])
    assert coarse["downsampled"] == any(n["totalPoints"] > 10 for n in coarse["history"])
    rounds = api.get(f"/sessions/{sid}/rounds").json()
    assert rounds["sessionId"] == sid and rounds["totalRounds"] == 2 and not rounds["downsampled"]
    assert rounds["slowestPeer"] == "node-2" and [r["round"] for r in rounds["rounds"]] == [1, 2]
    assert {p["peer"] for p in rounds["latest"]["peers"]} == {"node-1", "node-2"}
    assert rounds["rounds"][1]["train_seconds"] + rounds["rounds"][1]["averaging_seconds"] + \
        rounds["rounds"][1]["wait_seconds"] == rounds["rounds"][1]["round_seconds"]
    assert api.get("/sessions/nope123/nodes").status_code == 404
    assert api.get(f"/sessions/{sid}/nodes", params={"maxPoints": 1}).status_code == 422

    text = httpx.get(server.url + "/metrics", timeout=30).text  # anonymous: it is a public session
    got = samples(text)
    mine = [(name, labels, value) for name, labels, value in got if labels.get("session") == sid]
    assert ("cotrain_node_cpu_percent", {"session": sid, "node": "node-1"}, 75.0) in mine
    gpu = [(labels["node"], labels["gpu"]) for name, labels, _ in mine if name == "cotrain_node_gpu_util_percent"]
    assert sorted(gpu) == [("node-1", "0"), ("node-1", "1")]  # none for the node without a GPU
    assert ("cotrain_round_phase_seconds", {"session": sid, "phase": "wait"}, 0.5) in mine
    assert ("cotrain_round_bytes", {"session": sid, "direction": "received"}, 5_000_000.0) in mine
    assert ("cotrain_round", {"session": sid}, 2.0) in mine
    assert ("cotrain_session_step", {"session": sid}, 40.0) in mine
    for name, labels, _ in got:  # labels: declared keys, ids we generate or clean, fixed sets
        if name in node_metrics.METRICS:
            assert tuple(labels) == node_metrics.METRICS[name][2], (name, labels)
            assert all(PLAIN_ID.match(v) for v in labels.values()), labels
            assert labels.get("phase", "train") in ("train", "averaging", "wait")
            assert labels.get("direction", "sent") in ("sent", "received")

    # a crowd of volunteers: /metrics keeps to MAX_NODES per session, the API lists them all
    crowd = [node(f"peer-{i:03d}", now + 10 + i) for i in range(node_metrics.MAX_NODES + 8)]
    apply_events(url, sid, [progress(40, crowd)])
    exported = {labels["node"] for name, labels, _ in samples(httpx.get(server.url + "/metrics", timeout=30).text)
                if name == "cotrain_node_cpu_percent" and labels["session"] == sid}
    assert len(exported) == node_metrics.MAX_NODES
    assert "peer-039" in exported and "peer-000" not in exported  # the most recently seen stay
    assert len(api.get(f"/sessions/{sid}/nodes").json()["nodes"]) == len(engine_nodes) + 2 + len(crowd)


def done_time(session: dict) -> float:
    """When the run started (unix s): every node sample comes after it."""
    from datetime import datetime

    return datetime.fromisoformat(session["startedAt"]).timestamp()
