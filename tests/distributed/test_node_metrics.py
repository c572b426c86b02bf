"""Every machine of a run in the progress events: a 2-process DDP run on one node and on two
"nodes" (a c10d rendezvous on loopback) gather their processes' samples to rank 0, one NODE per
node; two DiLoCo peers carry their machines in their signed records and each lists both, with a
`round` block per outer step whose parts add up to the round. Plus the bounds a peer's blocks must
keep to be believed, and the round arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotrain.core.strategies.round_metrics import RoundClock, short_peer_id, slowest_peer, train_seconds_of
from cotrain.p2p.progress import PeerProgress, bounded_node, bounded_round
from tests.distributed.engine import cotrain_train, events_of, train_on_two_loopback_nodes, write_config
from tests.distributed.test_diloco import Peer, _prepare, run_to_completion

MIB = 1 << 20


def progress_nodes(events: list[dict]) -> list[list[dict]]:
    return [e["system"]["nodes"] for e in events if e["type"] == "progress" and "system" in e]


def assert_plausible(node: dict, processes: int) -> None:
    """A CPU node of this machine: real RAM, its processes' memory, traffic, no GPU fields."""
    assert 0 < node["ram_used_bytes"] < node["ram_total_bytes"]
    assert node["process_rss_bytes"] > processes * 50 * MIB  # torch and a model, per process
    assert node["host_cpus"] >= 1 and 0 <= node["cpu_percent"] <= 100
    assert node["net_sent_bytes_per_s"] > 0 and node["net_recv_bytes_per_s"] > 0  # the ranks' / peers' traffic
    assert node["net_sent_bytes_per_s"] < 10e9  # a rate, not a raw counter
    assert node["tokens_per_second"] > 0
    assert "gpus" not in node


@pytest.mark.slow
def test_ddp_on_one_node_reports_one_node_with_both_processes(cotrain_home: Path, tmp_path: Path):
    config = write_config(tmp_path / "ddp.toml", "ddp-nodes",
                          'strategy = "ddp"\nnodes = 1\ngpus_per_node = 2\nbackend = "gloo"', max_steps=8, interval=8)
    done = cotrain_train(config, cotrain_home)
    assert done.returncode == 0, done.stderr[-3000:]
    events = events_of(cotrain_home, "ddp-nodes")
    progress = [e for e in events if e["type"] == "progress"]
    samples = progress_nodes(events)
    assert len(samples) == len(progress) == 4  # every progress event, from the first
    for nodes, event in zip(samples, progress):
        assert [n["node"] for n in nodes] == ["node-0"]
        assert_plausible(nodes[0], processes=2)
        # the node's tokens/s are its two ranks' shares: about the run's own figure
        assert nodes[0]["tokens_per_second"] == pytest.approx(event["metrics"]["tokens_per_second"], rel=0.3)
    # checkpoints, events and status.json are written with fsync: the disk shows it at some point
    assert any(nodes[0]["disk_write_bytes_per_s"] > 0 for nodes in samples)


@pytest.mark.slow
def test_ddp_on_two_nodes_reports_each_node(cotrain_home: Path, shared_datasets: Path, tmp_path: Path):
    """`cotrain train` on two "nodes" (NODE_RANK 0 and 1 on loopback): rank 0's events list both."""
    config = write_config(tmp_path / "two.toml", "two-node-metrics",
                          'strategy = "ddp"\nnodes = 2\ngpus_per_node = 1\nbackend = "gloo"', max_steps=6, interval=6)
    _, second_home = train_on_two_loopback_nodes(config, cotrain_home, shared_datasets, tmp_path)
    events = next(e for e in (events_of(h, "two-node-metrics") for h in (cotrain_home, second_home)) if e)
    samples = progress_nodes(events)
    assert len(samples) == 3
    for listed in samples:
        assert sorted(n["node"] for n in listed) == ["node-0", "node-1"]
        for node in listed:
            assert_plausible(node, processes=1)


@pytest.mark.slow
def test_two_diloco_peers_list_both_machines_and_break_down_each_round(
    bootstrap: str, shared_datasets: Path, tmp_path: Path  # noqa: F811 (the fixture)
):
    _prepare(shared_datasets, tmp_path)
    peers = [Peer(f"peer{i}", tmp_path, shared_datasets, bootstrap, max_steps=15, log_interval=5) for i in range(2)]
    run_to_completion(peers, tmp_path)
    names = {short_peer_id(peer.peer_id()) for peer in peers}
    for peer in peers:
        own = short_peer_id(peer.peer_id())
        events = peer.events()
        samples = progress_nodes(events)
        assert samples and all(nodes[0]["node"] == own for nodes in samples)
        for nodes in samples:
            for node in nodes:
                assert_plausible(node, processes=1)
        # the other peer's machine arrives through its signed record
        assert any({n["node"] for n in nodes} == names for nodes in samples), [[n["node"] for n in s] for s in samples]

        rounds = [e["round"] for e in events if e["type"] == "progress" and "round" in e]
        print(peer.name, json.dumps({"system": {"nodes": samples[-1]}, "round": rounds[-1] if rounds else None}))
        assert [r["round"] for r in rounds] == [1, 2, 3]
        for r in rounds:
            assert r["group_size"] == 2 and r["slowest_peer"] in names
            assert r["bytes_sent"] > 0 and r["bytes_received"] > 0
            parts = r["train_seconds"] + r["averaging_seconds"] + r["wait_seconds"]
            assert parts == pytest.approx(r["round_seconds"], rel=0.1, abs=0.3), r
            assert r["train_seconds"] > 0 and r["averaging_seconds"] > 0
            assert r["peers"] == [{"peer": own, "train_seconds": r["train_seconds"], "bytes_sent": r["bytes_sent"],
                                   "bytes_received": r["bytes_received"]}]
        # a round moves about the model's size each way (fp32 pseudo-gradients, no compression)
        model_bytes = 4 * next(e for e in events if e["type"] == "started")["num_parameters"]
        assert 0.3 * model_bytes < rounds[-1]["bytes_sent"] < 3 * model_bytes


# --- what a peer may publish about itself ---------------------------------------------------------
NODE = {
    "node": "QmPeerPrefix1234", "host_cpus": 8, "cpu_percent": 12.5, "ram_used_bytes": 3 << 30,
    "ram_total_bytes": 16 << 30, "process_rss_bytes": 1 << 30, "net_sent_bytes_per_s": 1e6,
    "net_recv_bytes_per_s": 2e6, "disk_read_bytes_per_s": 0.0, "disk_write_bytes_per_s": 5e5,
    "tokens_per_second": 1234.5, "time": 1.8e9,
    "gpus": [{"index": 0, "name": "NVIDIA H200", "util_percent": 97.0, "mem_used_bytes": 80 << 30,
              "mem_total_bytes": 141 << 30, "power_w": None, "temp_c": 61.0}],
}
ROUND = {"round": 3, "round_seconds": 12.0, "train_seconds": 9.0, "averaging_seconds": 2.0, "wait_seconds": 1.0,
         "bytes_sent": 1000, "bytes_received": 1000, "group_size": 2, "slowest_peer": "QmOther"}


def test_a_peers_blocks_are_kept_only_within_bounds():
    assert bounded_node(NODE) == NODE
    assert bounded_round(ROUND) == ROUND
    for bad in ({"ram_used_bytes": -1}, {"cpu_percent": float("nan")}, {"net_sent_bytes_per_s": 1e20},
                {"node": "x" * 65}, {"node": ""}, {"time": "now"}, {"host_cpus": True},
                {"gpus": []}, {"gpus": [NODE["gpus"][0]] * 17}, {"gpus": [{"index": 0}]},
                {"gpus": [{**NODE["gpus"][0], "util_percent": 101.0}]}):
        assert bounded_node({**NODE, **bad}) is None, bad
    assert bounded_node({k: v for k, v in NODE.items() if k != "ram_total_bytes"}) is None
    assert bounded_node("a string") is None and bounded_node(None) is None
    assert "gpus" not in bounded_node({k: v for k, v in NODE.items() if k != "gpus"})
    assert bounded_node({**NODE, "extra": "x" * 10_000}) == NODE  # unknown fields are dropped
    for bad in ({"bytes_sent": -5}, {"round": "3"}, {"slowest_peer": 7}, {"wait_seconds": 1e9}):
        assert bounded_round({**ROUND, **bad}) is None, bad
    # a record with a bad block stays a record, without the block
    record = PeerProgress.from_value({"peer_id": "p", "session_id": "s", "step": 1, "outer_step": 0,
                                      "tokens_per_second": 1.0, "samples": 8, "tokens": 512,
                                      "system": {**NODE, "ram_used_bytes": -1}, "round": ROUND})
    assert record is not None and record.system is None and record.round == ROUND


def test_a_rounds_parts_and_its_slowest_peer():
    clock = RoundClock(started=0.0, bytes_at_start=(100, 50), train=6.0)
    clock.add(averaging=1.5, wait=2.5)
    with clock.phase("averaging"):
        pass
    block = clock.block(4, "QmMe", (1100, 1050), {"QmMe": 6.0, "QmSlow": 9.0})
    assert block["bytes_sent"] == block["bytes_received"] == 1000
    assert block["group_size"] == 2 and block["slowest_peer"] == "QmSlow"
    assert block["peers"] == [{"peer": "QmMe", "train_seconds": 6.0, "bytes_sent": 1000, "bytes_received": 1000}]
    assert slowest_peer({"QmMe": 3.0}) is None  # alone: nobody waited for anyone
    assert train_seconds_of({"QmAbcdefghijklmnopq": {"round": 1, "train_seconds": 2.5}, "QmB": {"round": 1}}) == {
        "QmAbcdefghijklmn": 2.5, "QmB": 0.0}
