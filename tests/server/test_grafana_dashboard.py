"""The Grafana dashboard that ships in deploy/grafana/ asks only for metrics the server exports:
every PromQL expression (panels and template variables) is parsed for the metric names it reads,
and each must be declared by the exporter (node_metrics.METRICS, the server's own series) and come
back, with samples, from a real server's GET /metrics after a session reported its machines and a
DiLoCo round."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from cotrain.server import node_metrics
from tests.server.conftest import reference_session
from tests.server.node_events import apply_events, node, progress, round_block

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "cotrain-dashboard.json"
# the server's other series (api/system.py, http_metrics.py)
SERVER_METRICS = {"cotrain_sessions", "cotrain_ws_subscribers", "cotrain_messages_published_total",
                  "cotrain_messages_delivered_total", "cotrain_runs", "cotrain_dht_up", "cotrain_http_requests_total",
                  "cotrain_http_route_requests_total", "cotrain_http_request_duration_seconds"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
            "inf", "nan", "atan2"}
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, range and grouping
    clauses, functions and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS or re.fullmatch(r"\d+\w*", name):
            continue
        names.add(name)
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            out.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", text))
    return out


def base_name(name: str) -> str:
    for part in HISTOGRAM_PARTS:
        if name.endswith(part) and name[: -len(part)] in SERVER_METRICS:
            return name[: -len(part)]
    return name


def dashboard_metrics() -> dict[str, set[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {expr: {base_name(n) for n in metric_names(expr)} for expr in expressions(dashboard)}


def test_the_parser_finds_metric_names_and_only_them():
    assert metric_names('sum by (node) (rate(cotrain_a_total{session=~"$session", x="y{z}"}[5m])) / on(node) '
                        "cotrain_b - time() > bool 3") == {"cotrain_a_total", "cotrain_b"}
    assert metric_names("topk(1, cotrain_round_peer_train_seconds{session=~\"$session\"})") == {
        "cotrain_round_peer_train_seconds"}
    assert metric_names("node_cpu_seconds_total offset 5m") == {"node_cpu_seconds_total"}


def test_every_dashboard_query_names_declared_metrics_only():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = []

    def walk(panels):
        for panel in panels:
            ids.append(panel["id"])
            assert panel["type"] == "row" or panel["datasource"]["uid"] == "${datasource}", panel["title"]
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    assert len(ids) == len(set(ids))
    declared = set(node_metrics.EXPORTED_METRIC_NAMES) | SERVER_METRICS
    per_expr = dashboard_metrics()
    assert len(per_expr) >= 30
    for expr, names in per_expr.items():
        assert names, f"no metric in {expr!r}"
        assert names <= declared, f"{expr!r} reads {names - declared}, which the server does not export"
    used = set().union(*per_expr.values())
    for wanted in ("cotrain_node_cpu_percent", "cotrain_node_ram_used_bytes", "cotrain_node_gpu_util_percent",
                   "cotrain_node_net_sent_bytes_per_second", "cotrain_node_disk_write_bytes_per_second",
                   "cotrain_round_phase_seconds", "cotrain_session_tokens_per_second"):
        assert wanted in used, wanted
    stacked = [p for p in dashboard["panels"] if "cotrain_round_phase_seconds" in json.dumps(p.get("targets", []))
               and p["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"]
    assert stacked, "the round breakdown is a stacked chart"


def test_a_real_servers_metrics_serve_every_dashboard_query(servers, cotrain_home):
    server = servers()
    with server.client() as api:
        created = api.post("/sessions", json=reference_session(name="dashboard", autoStart=False))
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
    now = time.time()
    apply_events(f"sqlite:///{cotrain_home / 'cotrain.db'}", sid, [
        progress(10, [node("node-0", now, gpus=2), node("node-1", now)], round_=round_block(1, [("node-0", 4.0)])),
        progress(12, [node("node-0", now + 2, gpus=2), node("node-1", now + 2)],
                 round_=round_block(2, [("node-0", 4.0), ("node-1", 5.0)])),
    ], status="completed")
    text = httpx.get(server.url + "/metrics", timeout=30).text
    typed = set(re.findall(r"^# TYPE (\S+) \S+$", text, re.M))
    sampled = {base_name(m) for m in re.findall(r"^([a-z_:]+)(?:\{[^}]*\})? \S+$", text, re.M)}
    assert set(node_metrics.EXPORTED_METRIC_NAMES) <= typed  # the declared list is what the server writes
    for expr, names in dashboard_metrics().items():
        assert names <= typed, f"{expr!r}: {names - typed} not on /metrics"
        assert names <= sampled, f"{expr!r}: {names - sampled} has no sample after a session reported"
