"""The Machines and DiLoCo rounds sections' logic without a browser: rates as bytes/s, a GPU that
is absent against one that is idle, last-seen ages, and live messages merged into the rows."""

from __future__ import annotations

import copy
from typing import Any

from cotrain.server.message_data import ProgressData
from cotrain.ui import i18n
from cotrain.ui.machines_view import Machines, Rounds, gpu_memory, gpu_util, rate, seen, used_of

GiB = 2**30


def node(name: str, when: float, *, gpus: list[dict[str, Any]] | None = None, **values: Any) -> dict[str, Any]:
    """A NODE of the engine's `system` block (issue 19's contract); `gpus` only when given."""
    out: dict[str, Any] = {
        "node": name, "host_cpus": 8, "cpu_percent": 35.0, "ram_used_bytes": 3 * GiB, "ram_total_bytes": 16 * GiB,
        "process_rss_bytes": GiB, "net_sent_bytes_per_s": 1024.0, "net_recv_bytes_per_s": 2048.0,
        "disk_read_bytes_per_s": 0.0, "disk_write_bytes_per_s": 5 * 2**20, "tokens_per_second": 1500.0,
        "time": when, **values,
    }
    if gpus is not None:
        out["gpus"] = gpus
    return out


def gpu(index: int, util: float, used: int = 10 * GiB) -> dict[str, Any]:
    return {"index": index, "name": "NVIDIA H200", "util_percent": util, "mem_used_bytes": used,
            "mem_total_bytes": 140 * GiB, "power_w": 310.0, "temp_c": 54.0}


def progress(*nodes: dict[str, Any], round_block: dict[str, Any] | None = None) -> ProgressData:
    """A `training.progress` message's data (wire form, parsed as the page parses it) with the seed's
    fields and the additive blocks."""
    data: dict[str, Any] = {"sessionId": "abc", "progress": 10.0, "loss": 2.5, "participants": len(nodes),
                            "metrics": {"tokensPerSecond": 3000.0}, "step": 10, "seq": 7,
                            "system": {"nodes": list(nodes)}}
    if round_block is not None:
        data["round"] = round_block
    return ProgressData.model_validate(data)


def test_rates_read_as_bytes_per_second() -> None:
    assert rate(0) == "0 B/s"
    assert rate(512) == "512 B/s"
    assert rate(1536) == "1.5 KiB/s"
    assert rate(12 * 2**20) == "12.0 MiB/s"
    assert rate(3.5 * GiB) == "3.5 GiB/s"
    assert rate(None) == "—"
    assert rate(float("nan")) == "—"
    assert used_of(3 * GiB, 16 * GiB) == "3.0 / 16.0 GiB"
    assert used_of(300 * 2**20, 512 * 2**20) == "300.0 / 512.0 MiB"
    assert used_of(None, 16 * GiB) == "—"


def test_a_node_without_a_gpu_shows_a_dash_and_an_idle_gpu_shows_zero() -> None:
    cpu_only = node("node-0", 100.0)
    idle = node("node-1", 100.0, gpus=[gpu(0, 0.0, used=0)])
    busy = node("node-2", 100.0, gpus=[gpu(0, 80.0), gpu(1, 60.0)])
    assert (gpu_util(cpu_only), gpu_memory(cpu_only)) == ("—", "—")
    assert (gpu_util(idle), gpu_memory(idle)) == ("0%", "0.0 / 140.0 GiB")
    assert (gpu_util(busy), gpu_memory(busy)) == ("70% ×2", "20.0 / 280.0 GiB")

    machines = Machines()
    machines.add_many([cpu_only, idle, busy])
    rows = {r["node"]: r for r in machines.rows(now=101.0)}
    assert rows["node-0"]["gpu"] is False and rows["node-0"]["gpu_util"] == "—"
    assert rows["node-1"]["gpu_util"] == "0%"
    assert "NVIDIA H200" in rows["node-2"]["gpu_detail"] and "310 W" in rows["node-2"]["gpu_detail"]
    # the GPU chart has no line for the node without one, and a zero line for the idle one
    assert machines.chart("gpu_util_percent") == {"node-1": [[100_000.0, 0.0]], "node-2": [[100_000.0, 70.0]]}
    assert machines.any_gpu()
    assert not Machines(latest={"node-0": cpu_only}).any_gpu()


def test_last_seen_ages_in_english_and_chinese() -> None:
    assert seen(100.0, now=104.9) == "4 s ago"
    assert seen(100.0, now=100.0 + 125) == "2 min ago"
    assert seen(100.0, now=100.0 + 7300) == "2 h ago"
    assert seen(100.0, now=100.0 + 3 * 86400) == "3 d ago"
    assert seen(200.0, now=100.0) == "0 s ago"  # a node's clock ahead of the server's
    assert seen(None, now=100.0) == "—"
    i18n.use_language("zh-CN")
    try:
        assert seen(100.0, now=104.0) == "4 秒前"
        assert seen(100.0, now=100.0 + 125) == "2 分钟前"
    finally:
        i18n.use_language("en")


def test_live_messages_merge_into_one_row_per_node() -> None:
    machines = Machines()
    assert machines.add_many([node("node-0", 100.0), node("node-0", 110.0)])  # stored history
    message = progress(node("node-0", 120.0, ram_used_bytes=4 * GiB, net_recv_bytes_per_s=3 * 2**20),
                       node("node-10", 120.0), node("node-2", 121.0))
    assert machines.add_progress(message)
    assert not machines.add_progress(copy.deepcopy(message)), "a replayed message changed the rows"
    rows = machines.rows(now=125.0)
    assert [r["node"] for r in rows] == ["node-0", "node-2", "node-10"]  # in node order, not text order
    first = rows[0]
    assert (first["ram"], first["net_in"], first["net_out"], first["disk_write"]) == (
        "4.0 / 16.0 GiB", "3.0 MiB/s", "1.0 KiB/s", "5.0 MiB/s")
    assert (first["tps"], first["cpu"], first["seen"], first["stale"]) == ("1.5K", "35%", "5 s ago", False)
    assert [p[1] for p in machines.chart("ram_used_bytes")["node-0"]] == [3 * GiB, 3 * GiB, 4 * GiB]

    # an older sample (a gap filled from the database) joins the chart but not the row
    assert machines.add(node("node-0", 105.0, ram_used_bytes=GiB))
    assert [p[0] for p in machines.chart("ram_used_bytes")["node-0"]] == [100_000.0, 105_000.0, 110_000.0, 120_000.0]
    assert machines.rows(now=125.0)[0]["ram"] == "4.0 / 16.0 GiB"
    # a node silent for over a minute is marked stale; a message without a system block changes nothing
    assert machines.rows(now=200.0)[0]["stale"] is True
    assert not machines.add_progress(ProgressData(progress=50.0, step=20))
    # in and out of each node, paired for the network chart
    assert list(machines.chart("net_recv_bytes_per_s", "net_sent_bytes_per_s")) == [
        "node-0 in", "node-0 out", "node-2 in", "node-2 out", "node-10 in", "node-10 out"]


def test_charts_draw_the_most_recently_seen_nodes_and_the_table_lists_all() -> None:
    machines = Machines()
    machines.add_many([node(f"node-{i}", 100.0 + i) for i in range(20)])
    drawn = list(machines.chart("ram_used_bytes"))
    assert len(drawn) == 16 and drawn[0] == "node-4" and drawn[-1] == "node-19"
    assert len(machines.rows(now=120.0)) == 20


def test_a_missing_rate_reads_as_a_dash_and_only_the_contracts_keys_are_read() -> None:
    machines = Machines()
    machines.add({"node": "12D3KooWAbCdEfGhIjKlMnOpQrStUv", "ram_used_bytes": GiB, "ram_total_bytes": 2 * GiB,
                  "net_sent_bytes_per_s": 10.0, "diskReadBytesPerS": 99.0, "time": 50.0})
    row = machines.rows(now=51.0)[0]
    assert row["node_short"] == "12D3KooW…QrStUv"
    assert (row["ram"], row["net_out"], row["net_in"], row["tps"]) == ("1.0 / 2.0 GiB", "10 B/s", "—", "—")
    assert row["disk_read"] == "—", "a key in another spelling than the contract's was read"
    assert not machines.add({"ram_used_bytes": 1}), "a sample naming no node was taken"


def test_stored_history_then_live_messages() -> None:
    """What session_view.load hands the page: each node's newest sample (with its GPUs) first, then
    its stored points (node-level `gpu_util_percent`, no device list); then live messages."""
    latest = node("node-0", 120.0, gpus=[gpu(0, 90.0)], step=40, last_seen=120.0)
    points = [{"node": "node-0", "step": s, "time": t, "ram_used_bytes": r, "gpu_util_percent": u}
              for s, t, r, u in ((20, 100.0, GiB, 50.0), (30, 110.0, 2 * GiB, 70.0), (40, 120.0, 3 * GiB, 90.0))]
    machines = Machines()
    machines.add_many([latest, *points])
    assert machines.rows(now=121.0)[0]["gpu_util"] == "90%"  # the newest sample, devices and all
    assert [p[1] for p in machines.chart("gpu_util_percent")["node-0"]] == [50.0, 70.0, 90.0]
    assert machines.add_progress(progress(node("node-0", 130.0, gpus=[gpu(0, 10.0)])))
    assert machines.rows(now=131.0)[0]["gpu_util"] == "10%"
    assert len(machines.chart("ram_used_bytes")["node-0"]) == 4


def round_block(number: int, peer: str, train: float, *, slowest: str | None = None, wait: float = 0.5,
                sent: int = 4 * 2**20) -> dict[str, Any]:
    return {"round": number, "round_seconds": train + 1.0 + wait, "train_seconds": train, "averaging_seconds": 1.0,
            "wait_seconds": wait, "bytes_sent": sent, "bytes_received": sent, "group_size": 2,
            "slowest_peer": slowest, "peers": [{"peer": peer, "train_seconds": train, "bytes_sent": sent,
                                                "bytes_received": sent}]}


def test_rounds_merge_each_peers_block_and_name_the_slowest() -> None:
    rounds = Rounds()
    a, b = "12D3KooWPeerAaaaaaaaaaaaaaaaaaaaaaaaa1", "12D3KooWPeerBbbbbbbbbbbbbbbbbbbbbbbbb2"
    assert rounds.add_progress(progress(round_block=round_block(1, a, 4.0)))
    assert rounds.slowest_text() == "Slowest peer: not known yet (only one peer has reported)."
    assert rounds.add_progress(progress(round_block=round_block(1, b, 6.0, wait=0.0)))
    assert not rounds.add_progress(progress(round_block=round_block(1, b, 6.0, wait=0.0))), "a replay was counted"
    assert rounds.add(round_block(2, b, 7.0, slowest=b))
    # round 1: two peers known, so training is their mean and waiting the mean wait for the slowest;
    # round 2: one report so far, taken as it is
    assert rounds.bars() == {"rounds": ["1", "2"], "train": [5.0, 7.0], "averaging": [1.0, 1.0], "wait": [1.0, 0.5]}
    first = rounds.by_round[1]
    assert first.slowest_peer == b  # not named in round 1: the peer that trained longest
    assert (first.group_size, first.bytes_sent) == (2, 8 * 2**20)
    assert rounds.slowest_text() == "Slowest peer in round 2: 12D3KooW…bbbbb2 (trained 7.0 s)"
    assert rounds.summary().startswith("Round 2: 8.5 s (training 7.0 s, averaging 1.0 s, waiting 0.5 s) · group of 2")
    assert [r["peer"] for r in rounds.peer_rows()] == [b] and rounds.peer_rows()[0]["slowest"]
    rounds.add(round_block(2, a, 3.0))
    peer_rows = [(r["peer"], r["slowest"], r["train"]) for r in rounds.peer_rows()]
    assert peer_rows == [(b, True, "7.0 s"), (a, False, "3.0 s")]
    assert rounds.bars()["train"][1] == 5.0 and rounds.bars()["wait"][1] == 2.0
    assert not rounds.add_progress(ProgressData(progress=5.0)) and not rounds.add({"train_seconds": 1.0})
    alone = Rounds()
    alone.add({**round_block(1, a, 2.0), "group_size": 1})
    assert alone.slowest_text() == "A group of one: no peer to wait for."


def test_a_stored_round_reads_like_the_live_reports_it_was_merged_from() -> None:
    """The server keeps one row per round (a later report's fields win, peers merged by id): the
    page shows the same bars from that row after a reload as it did from the live messages."""
    a, b = "peer-a", "peer-b"
    live = Rounds()
    live.add(round_block(1, a, 4.0))
    live.add(round_block(1, b, 6.0, wait=0.0))
    stored = {**round_block(1, b, 6.0, wait=0.0), "slowest_peer": b, "time": 10.0, "step": 50,
              "peers": round_block(1, a, 4.0)["peers"] + round_block(1, b, 6.0)["peers"]}
    reloaded = Rounds()
    reloaded.add_many([stored])
    assert reloaded.bars() == live.bars()
    assert reloaded.slowest_text() == live.slowest_text() == "Slowest peer in round 1: peer-b (trained 6.0 s)"
