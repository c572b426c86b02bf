"""The session page's Machines and DiLoCo rounds sections in a real browser, updating live.

The server runs on this machine's Redis, so its fan-out is the production `RedisHub`. Each test
starts a real session (the engine runs, so the row is `running`) whose engine logs too rarely to
report anything during the test, and publishes `training.progress` messages in issue 19's
contract shape for that session through the platform's own hub class: the page must show them
as they arrive, without reloading. Screenshots: docs/screenshots/machines.png, rounds.png (and
the dark, Simplified Chinese machines-dark-zh-CN.png)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import missing_service
from tests.ui.conftest import TINY, Server, ready, running_server, screenshot

pytestmark = pytest.mark.browser

GiB, MiB = 2**30, 2**20
PEER_A = "12D3KooWQx8RzVolunteerA7cKpN3sJt5Lw2Hd9YmB4fE6gUiXo"  # a libp2p-shaped peer id (52 chars)
PEER_B = "12D3KooWBf2TkVolunteerB9eRxM1nWq7Zs3Vj6Lc8Hy4Dp5GaKt"
# the engine logs and steps so rarely that nothing of its own reaches the page during a test
QUIET = {"maxSteps": 10**6, "logInterval": 10**6, "evalInterval": 10**6}

NO_RELOAD = """() => {
  window.__noReload = true;
  window.__rowCounts = [];
  const table = document.querySelector('[data-testid=machines-table]');
  new MutationObserver(() => window.__rowCounts.push(table.querySelectorAll('tbody tr').length))
    .observe(table, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own server, on Redis (overrides the package's in-process one)."""
    import redis

    from tests.server.conftest import REDIS_URL

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except Exception as exc:
        missing_service(f"Redis is not reachable at {REDIS_URL} ({exc}); start it to run these tests")
    with running_server(tmp_path_factory.mktemp("ui-machines"), REDIS_URL=REDIS_URL,
                        COTRAIN_RATE_LIMIT_NAMESPACE=f"ui-machines-{time.time_ns()}") as started:
        yield started


def publish(session_id: str, seq: int, event: dict[str, Any]) -> None:
    """One engine `progress` event as the server turns it into a `training.progress` message,
    published through the platform's Redis fan-out (the class the server itself publishes with)."""
    from cotrain.server.fanout import RedisHub
    from cotrain.server.monitor import progress_data
    from tests.server.conftest import REDIS_URL

    payload = progress_data(event).to_wire()
    message = {"event": "training.progress", "data": {"sessionId": session_id, **payload, "seq": seq}, "owner": None}

    async def send() -> None:
        hub = RedisHub(REDIS_URL, listen=False)
        await hub.start()
        try:
            await hub.publish(message)
        finally:
            await hub.stop()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        pool.submit(asyncio.run, send()).result(timeout=30)


def node(name: str, when: float, i: int, *, gpus: int = 0, tps: float | None = None, k: int = 0) -> dict[str, Any]:
    """A NODE of the contract whose figures move a little with the sample `i` and the node `k`."""
    out: dict[str, Any] = {
        "node": name, "host_cpus": 32, "cpu_percent": 40.0 + 3 * i - 4 * k,
        "ram_used_bytes": int((38 + 1.5 * i - 6 * k) * GiB), "ram_total_bytes": 256 * GiB, "process_rss_bytes": 9 * GiB,
        "net_sent_bytes_per_s": (220 + 15 * ((i + k) % 3) - 40 * k) * MiB,
        "net_recv_bytes_per_s": (210 + 12 * ((i + k) % 4) - 40 * k) * MiB,
        "disk_read_bytes_per_s": (35 + 5 * (i % 2) - 9 * k) * MiB,
        "disk_write_bytes_per_s": (2 if (i + 2 * k) % 5 else 410 - 60 * k) * MiB,
        "tokens_per_second": tps, "time": when,
    }
    if gpus:
        out["gpus"] = [{"index": g, "name": "NVIDIA H100 80GB HBM3", "util_percent": 88.0 + (g + i) % 7 - 9 * k,
                        "mem_used_bytes": int((61 + g + 0.2 * i) * GiB), "mem_total_bytes": 80 * GiB,
                        "power_w": 540.0 + 10 * g, "temp_c": 61.0 + g} for g in range(gpus)]
    return out


def progress_event(step: int, when: float, nodes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "progress", "seq": 10_000 + step, "time": when, "step": step, "total_steps": 10**6,
            "progress": step / 10**4, "loss": 3.1 - step / 1000, "participants": len(nodes),
            "metrics": {"tokens_per_second": sum(n.get("tokens_per_second") or 0 for n in nodes)},
            "system": {"nodes": nodes}, **extra}


THREE_ROWS = "() => document.querySelectorAll('[data-testid=machines-table] tbody tr').length === 3"


def cluster_event(start: float, i: int) -> dict[str, Any]:
    """Sample `i` of three DDP nodes, 5 s apart: two with two GPUs each, one without a GPU."""
    when = start + 5 * i
    nodes = [node("node-0", when, i, gpus=2, tps=41_000 + 300 * i),
             node("node-1", when + 0.2, i, gpus=2, tps=40_200 + 250 * i, k=1),
             node("node-2", when + 0.4, i, tps=None, k=2)]
    return progress_event(10 * (i + 1), when, nodes)


def start_quiet_session(server: Server, name: str, **distributed: Any) -> str:
    body = {**TINY, "name": name, "trainingConfig": {**TINY["trainingConfig"], **QUIET}}
    if distributed:
        body["distributedConfig"] = distributed
        body["checkpointConfig"] = {"interval": distributed["innerSteps"]}  # on outer steps only
    try:
        session_id = server.api("POST", "/sessions", body)["id"]
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"the server refused the session: {exc.read().decode()}") from None
    server.wait_status(session_id, "running", timeout=120)
    return session_id


def scroll_to(page: Any, testid: str) -> None:
    page.evaluate("t => { const el = document.querySelector(`[data-testid=${t}]`);"
                  " window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 72); }", testid)


def test_machine_rows_fill_in_live(page: Any, server: Server) -> None:
    session_id = start_quiet_session(server, "llama 7B · 3 nodes (DDP)")
    try:
        page.goto(f"/sessions/{session_id}")
        page.get_by_test_id("status-badge").filter(has_text="Running").wait_for()
        ready(page)
        assert page.get_by_test_id("machines-empty").is_visible()
        page.evaluate(NO_RELOAD)
        start = time.time() - 55
        for i in range(12):  # a minute of samples, 5 s apart, published as they "happen"
            publish(session_id, 1000 + i, cluster_event(start, i))
            if i == 0:  # the first message alone fills the rows
                page.wait_for_function(THREE_ROWS)
        table = page.get_by_test_id("machines-table")
        rows = {n: table.locator(f"tbody tr[data-node='{n}']") for n in ("node-0", "node-1", "node-2")}
        rows["node-0"].get_by_text("54.5 / 256.0 GiB").wait_for()  # RAM of the 12th sample: it moved live
        cells = {n: [c.strip() for c in r.locator("td").all_text_contents()] for n, r in rows.items()}
        # node, GPU util, GPU memory, CPU, RAM, net in, net out, disk read, disk write, tokens/s, last seen
        assert cells["node-0"][1:3] == ["92% ×2", "127.4 / 160.0 GiB"], cells["node-0"]
        assert cells["node-2"][1:3] == ["—", "—"], f"a node without a GPU must show no GPU figures: {cells['node-2']}"
        assert cells["node-0"][5:9] == ["246.0 MiB/s", "250.0 MiB/s", "40.0 MiB/s", "2.0 MiB/s"], cells["node-0"]
        assert cells["node-0"][9] == "44.3K" and cells["node-2"][9] == "—"
        assert cells["node-0"][10].endswith("s ago")
        assert "NVIDIA H100" in (rows["node-0"].locator("td").nth(1).get_attribute("title") or "")
        for chart in ("machines-ram-chart", "machines-net-chart", "machines-disk-chart"):
            page.wait_for_function("t => Number(document.querySelector(`[data-testid=${t}]`)"
                                   ".getAttribute('data-points')) >= 24", arg=chart)
        assert page.get_by_test_id("machines-gpu-chart").is_visible()
        assert page.evaluate("window.__noReload") is True, "the page reloaded"
        assert page.get_by_test_id("rounds-section").count() == 0  # DDP has no rounds
        scroll_to(page, "machines-section")
        screenshot(page, "machines")

        # Simplified Chinese and the dark theme (each switch reloads the page, which then follows anew)
        page.get_by_test_id("language").click()
        page.get_by_test_id("lang-zh-CN").click()
        page.get_by_text("机器").first.wait_for()
        ready(page)
        page.get_by_test_id("theme").click()
        page.wait_for_function("() => document.body.classList.contains('body--dark')")
        page.reload()  # the theme is remembered
        page.wait_for_function("() => document.body.classList.contains('body--dark')")
        page.get_by_test_id("machines-section").wait_for()
        ready(page)
        start = time.time() - 25
        for i in range(6):
            publish(session_id, 2000 + i, cluster_event(start, i))
        page.wait_for_function(THREE_ROWS)
        page.get_by_test_id("machines-table").get_by_text("秒前").first.wait_for()
        page.wait_for_function("() => Number(document.querySelector('[data-testid=machines-ram-chart]')"
                               ".getAttribute('data-points')) >= 18")
        assert page.get_by_text("GPU 利用率").count() >= 1
        scroll_to(page, "machines-section")
        screenshot(page, "machines-dark-zh-CN")
    finally:
        server.api("POST", f"/sessions/{session_id}/cancel")
        server.wait_status(session_id, "cancelled", timeout=60)


def round_block(number: int, peer: str, train: float, wait: float, averaging: float, *, slowest: str | None,
                sent: int) -> dict[str, Any]:
    """One peer's `round` block of the contract (its own entry in `peers`)."""
    return {"round": number, "round_seconds": round(train + averaging + wait, 3), "train_seconds": train,
            "averaging_seconds": averaging, "wait_seconds": wait, "bytes_sent": sent, "bytes_received": sent - 3 * MiB,
            "group_size": 2, "slowest_peer": slowest,
            "peers": [{"peer": peer, "train_seconds": train, "bytes_sent": sent, "bytes_received": sent - 3 * MiB}]}


def publish_rounds(session_id: str, seq: int, first_seen: Callable[[], Any] | None = None) -> None:
    """Eight rounds of two peers, each peer's progress event with its own `round` block and machine;
    B (a CPU volunteer) trains slower and A waits for it. `first_seen`: waits for round 1 on the page."""
    start = time.time() - 600
    for r in range(1, 9):
        end = start + 70 * r
        train_a, train_b = 48.0 + r % 3, 58.0 + 2 * (r % 4)
        averaging = 6.0 + (r % 2)
        for peer, train, gpus, tps in ((PEER_A, train_a, 1, 9_800.0), (PEER_B, train_b, 0, 8_100.0)):
            wait = round(max(train_a, train_b) - train, 3)
            block = round_block(r, peer, train, wait, averaging, sent=(96 if peer == PEER_A else 95) * MiB,
                                slowest=PEER_B)
            nodes = [node(peer, end, r, gpus=gpus, tps=tps, k=int(peer == PEER_B))]
            seq += 1
            publish(session_id, seq, progress_event(500 * r, end, nodes, round=block))
        if r == 1 and first_seen is not None:
            first_seen()


def test_diloco_round_breakdown_and_slowest_peer(page: Any, server: Server) -> None:
    session_id = start_quiet_session(server, "llama 1B · volunteers (DiLoCo)", strategy="diloco", innerSteps=10**6)
    try:
        page.goto(f"/sessions/{session_id}")
        page.get_by_test_id("status-badge").filter(has_text="Running").wait_for()
        ready(page)
        assert page.get_by_test_id("rounds-summary").text_content() == "No outer round has finished yet."
        page.evaluate(NO_RELOAD)
        publish_rounds(session_id, 2000, first_seen=lambda: page.get_by_test_id("slowest-peer").filter(
            has_text="Slowest peer in round 1").wait_for())
        page.wait_for_function("() => document.querySelector('[data-testid=rounds-chart]')"
                               ".getAttribute('data-points') === '8'")
        slowest = page.get_by_test_id("slowest-peer").text_content()
        assert slowest == "Slowest peer in round 8: 12D3KooW…p5GaKt (trained 58.0 s)", slowest
        summary = page.get_by_test_id("rounds-summary").text_content()
        # round 8: A trained 50 s, B 58 s: training is their mean, waiting the mean wait for B
        expected = "Round 8: 64.0 s (training 54.0 s, averaging 6.0 s, waiting 4.0 s) · group of 2"
        assert summary.startswith(expected), summary
        peers = page.get_by_test_id("round-peers-table").locator("tbody tr")
        assert peers.count() == 2
        assert peers.nth(0).get_attribute("data-peer") == PEER_B and "slowest" in peers.nth(0).text_content()
        # each peer is a machine row; the volunteer without a GPU shows none
        table = page.get_by_test_id("machines-table")
        b_row = [c.strip() for c in table.locator(f"tbody tr[data-node='{PEER_B}']").locator("td").all_text_contents()]
        assert b_row[0] == "12D3KooW…p5GaKt" and b_row[1:3] == ["—", "—"], b_row
        assert page.evaluate("window.__noReload") is True, "the page reloaded"
        scroll_to(page, "rounds-section")
        screenshot(page, "rounds")

        # Simplified Chinese, dark (a reload each: the page follows anew, so the rounds come again)
        page.get_by_test_id("language").click()
        page.get_by_test_id("lang-zh-CN").click()
        page.get_by_text("DiLoCo 轮次").first.wait_for()
        page.get_by_test_id("theme").click()
        page.wait_for_function("() => document.body.classList.contains('body--dark')")
        page.reload()
        page.wait_for_function("() => document.body.classList.contains('body--dark')")
        page.get_by_test_id("rounds-section").wait_for()
        ready(page)
        publish_rounds(session_id, 3000)
        page.wait_for_function("() => document.querySelector('[data-testid=rounds-chart]')"
                               ".getAttribute('data-points') === '8'")
        page.get_by_test_id("slowest-peer").filter(has_text="第 8 轮最慢的节点").wait_for()
        scroll_to(page, "rounds-section")
        screenshot(page, "rounds-dark-zh-CN")
    finally:
        server.api("POST", f"/sessions/{session_id}/cancel")
        server.wait_status(session_id, "cancelled", timeout=60)


def test_a_real_run_fills_its_machine_row_live_and_after_a_reload(page: Any, server: Server) -> None:
    """No published messages here: the engine's own `system` block, through the executor, the
    monitor, the database and the hub, to the row; after a reload the stored history fills it."""
    import re

    created = server.api("POST", "/sessions", {**TINY, "name": "tiny llama (its machine)", "autoStart": False})
    page.goto(f"/sessions/{created['id']}")
    page.get_by_test_id("status-badge").filter(has_text="Draft").wait_for()
    ready(page)
    assert page.get_by_test_id("machines-empty").text_content() == "No machine metrics recorded."
    page.evaluate(NO_RELOAD)
    server.api("POST", f"/sessions/{created['id']}/start")
    row = page.get_by_test_id("machines-table").locator("tbody tr[data-node='node-0']")
    row.wait_for(timeout=120_000)
    cells = [c.strip() for c in row.locator("td").all_text_contents()]
    assert cells[1:3] == ["—", "—"], f"this machine has no GPU: {cells}"
    assert re.fullmatch(r"\d+\.\d / \d+\.\d [KMGT]iB", cells[4]), cells
    assert all(c.endswith("/s") for c in cells[5:9]), cells
    page.get_by_test_id("status-badge").filter(has_text="Completed").wait_for(timeout=150_000)
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    page.reload()
    row.wait_for()
    assert [c.strip() for c in row.locator("td").all_text_contents()][4] != "—"
    page.wait_for_function("() => Number(document.querySelector('[data-testid=machines-ram-chart]')"
                           ".getAttribute('data-points')) >= 2")
    print("\nthis machine's row after the run:", [c.strip() for c in row.locator("td").all_text_contents()])
    scroll_to(page, "machines-section")
    screenshot(page, "machines-real-run")


def test_a_real_diloco_run_draws_its_rounds(page: Any, server: Server) -> None:
    """One DiLoCo peer (the server's own worker) on this machine: its engine's `round` blocks reach
    the chart live, and the stored rounds draw it again after a reload."""
    body = {**TINY, "name": "tiny llama (DiLoCo rounds)", "autoStart": False,
            "trainingConfig": {**TINY["trainingConfig"], "maxSteps": 40, "evalInterval": 20},
            "distributedConfig": {"strategy": "diloco", "innerSteps": 10}, "checkpointConfig": {"interval": 20}}
    created = server.api("POST", "/sessions", body)
    page.goto(f"/sessions/{created['id']}")
    page.get_by_test_id("status-badge").filter(has_text="Draft").wait_for()
    ready(page)
    page.evaluate(NO_RELOAD)
    server.api("POST", f"/sessions/{created['id']}/start")
    chart = "() => Number(document.querySelector('[data-testid=rounds-chart]').getAttribute('data-points'))"
    page.wait_for_function(f"() => ({chart})() >= 1", timeout=150_000)
    page.get_by_test_id("status-badge").filter(has_text="Completed").wait_for(timeout=150_000)
    stored = server.api("GET", f"/sessions/{created['id']}/rounds")["totalRounds"]
    assert stored == 4, f"the server kept {stored} rounds of 4"
    page.wait_for_function(f"() => ({chart})() === {stored}")  # the last ones land with the completion
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    summary = page.get_by_test_id("rounds-summary").text_content()
    assert page.get_by_test_id("slowest-peer").text_content() == "A group of one: no peer to wait for."
    print("\nthe newest round as the page says it:", summary, "|", page.get_by_test_id("slowest-peer").text_content())
    page.reload()
    page.wait_for_function(f"() => ({chart})() === {stored}")
    assert page.get_by_test_id("rounds-summary").text_content() == summary
    scroll_to(page, "rounds-section")
    screenshot(page, "rounds-real-run")
