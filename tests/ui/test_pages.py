"""The web UI in a real browser against a real server that trains real (tiny) models.

Tests run in file order and share the server: the session the first test creates through the
form is the one the later ones compare, translate and list. Each writes its screenshots to
docs/screenshots/ (1280×800)."""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import TINY, Server, ready, screenshot, sign_in

pytestmark = pytest.mark.browser

WATCH = """() => {
  window.__noReload = true;
  window.__percents = new Set();
  window.__points = new Set();
  const percent = document.querySelector('[data-testid=progress-percent]');
  const chart = document.querySelector('[data-testid=loss-chart]');
  new MutationObserver(() => window.__percents.add(percent.textContent))
    .observe(percent, {childList: true, characterData: true, subtree: true});
  window.__points.add(chart.getAttribute('data-points'));  // what the page showed when it was ready
  new MutationObserver(() => window.__points.add(chart.getAttribute('data-points')))
    .observe(chart, {attributes: true, attributeFilter: ['data-points']});
}"""


def _field(page: Any, testid: str) -> Any:
    return page.get_by_test_id(testid)


def _fill(page: Any, testid: str, value: str) -> None:
    box = _field(page, testid)
    box.fill(value)
    box.press("Tab")


def _preview_has(page: Any, text: str) -> None:
    page.wait_for_function("t => document.querySelector('[data-testid=toml-preview]').textContent.includes(t)",
                           arg=text)


def test_create_session_in_the_form_and_watch_it_train_live(page: Any, server: Server) -> None:
    page.goto("/")
    page.get_by_text("No sessions yet").wait_for()
    screenshot(page, "sessions-empty")
    sign_in(page)
    page.get_by_test_id("new-session").click()
    page.wait_for_url("**/sessions/new")
    ready(page)

    _fill(page, "f-name", "tiny llama (browser)")
    _preview_has(page, 'name = "tiny llama (browser)"')
    _fill(page, "f-description", "llama2 debug on the stdlib corpus")
    # inline validation shows the server's own message, and blocks creating
    _fill(page, "f-batch-size", "0")
    page.get_by_text("Input should be greater than 0").wait_for()
    assert page.get_by_test_id("create").is_disabled()
    _fill(page, "f-batch-size", "8")
    _fill(page, "f-max-steps", "40")
    page.get_by_test_id("advanced").click()
    _fill(page, "f-dataset", "stdlib")
    _fill(page, "f-max-bytes", "300000")
    _fill(page, "f-seq-length", "64")
    _fill(page, "f-vocab-size", "512")
    _fill(page, "f-log-interval", "2")
    _fill(page, "f-eval-interval", "10")
    preview = page.get_by_test_id("toml-preview")
    _preview_has(page, "max_steps = 40")
    assert "vocab_size = 512" in preview.text_content()
    assert page.get_by_test_id("est-params").text_content() not in ("", "—")
    page.get_by_test_id("advanced").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "new-session")

    assert page.get_by_test_id("create").is_enabled()
    page.get_by_test_id("create").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f]{12}$"))
    page.get_by_test_id("progress-percent").wait_for()
    ready(page)
    page.evaluate(WATCH)
    assert page.get_by_test_id("session-name").text_content() == "tiny llama (browser)"
    # a picture of the run in flight, when the machine is slow enough to catch one
    page.wait_for_function("() => window.__points.size >= 3 || window.__percents.has('100%')", timeout=150_000)
    if page.evaluate("window.__points.size >= 3 && !window.__percents.has('100%')"):
        screenshot(page, "session-detail-live")
    page.get_by_test_id("status-badge").filter(has_text="Completed").wait_for(timeout=150_000)
    page.wait_for_function("() => window.__percents.has('100%')")
    percents = page.evaluate("[...window.__percents]")
    points = page.evaluate("[...window.__points].map(Number)")
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    assert len(percents) >= 2, f"the progress bar did not move live: {percents}"
    assert len(points) >= 2 and max(points) >= 10, f"the loss chart did not grow live: {points}"
    page.get_by_test_id("checkpoints-table").wait_for()
    screenshot(page, "session-detail")

    with page.expect_download() as config_download:
        page.get_by_test_id("download-config").click()
    assert "max_steps = 40" in Path(config_download.value.path()).read_text()
    with page.expect_download() as model_download:
        page.get_by_test_id("download-model").click()
    assert model_download.value.suggested_filename.endswith("-v1.zip")
    assert zipfile.ZipFile(model_download.value.path()).namelist()


ROW_WATCH = """name => {
  window.__rows = new Set();
  window.__noReload = true;
  const table = document.querySelector('[data-testid=sessions-table]');
  new MutationObserver(() => {
    for (const tr of table.querySelectorAll('tbody tr'))
      if (tr.textContent.includes(name)) window.__rows.add(tr.textContent);
  }).observe(table, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_sessions_list_follows_a_run_then_compare_two_models(page: Any, server: Server) -> None:
    page.goto("/")
    page.get_by_test_id("sessions-table").locator("tbody tr").first.wait_for()
    ready(page)
    name = "tiny llama lr 3e-3"
    page.evaluate(ROW_WATCH, name)
    body = {**TINY, "name": name, "trainingConfig": {**TINY["trainingConfig"], "learningRate": 3e-3}}
    created = server.api("POST", "/sessions", body)  # another client creates it: the list shows it live
    row = page.get_by_test_id("sessions-table").locator("tbody tr", has_text=name)
    row.get_by_text("Completed").wait_for(timeout=150_000)
    seen = page.evaluate("[...window.__rows]")  # in order of appearance
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    assert len(seen) >= 2 and "Completed" not in seen[0], f"the row did not update live: {seen}"
    assert server.api("GET", f"/sessions/{created['id']}")["status"] == "completed"

    page.goto("/models")
    table = page.get_by_test_id("models-table")
    table.locator("tbody tr").nth(1).wait_for()
    boxes = table.locator("tbody .q-checkbox")
    boxes.nth(0).click()
    boxes.nth(1).click()
    page.get_by_test_id("compare").click()
    page.get_by_test_id("comparison-table").wait_for()
    assert page.get_by_test_id("comparison-table").get_by_text("best").count() >= 1
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=compare-chart]').getAttribute('data-points')) > 10")
    page.get_by_test_id("comparison-table").scroll_into_view_if_needed()
    screenshot(page, "models-compare")


def test_switch_language_and_theme(page: Any, server: Server) -> None:
    page.goto("/")
    page.get_by_test_id("sessions-table").locator("tbody tr").nth(1).wait_for()
    screenshot(page, "sessions")
    page.get_by_test_id("language").click()
    page.get_by_test_id("lang-zh-CN").click()
    page.get_by_text("新建会话").first.wait_for()
    assert page.get_by_text("已完成").count() >= 1
    screenshot(page, "sessions-zh-CN")
    page.get_by_test_id("new-session").click()
    page.get_by_text("新建训练会话").wait_for()
    screenshot(page, "new-session-zh-CN")

    page.get_by_test_id("nav-sessions").click()
    page.get_by_test_id("sessions-table").locator("tbody tr").first.click()
    page.get_by_test_id("progress-percent").wait_for()
    page.get_by_test_id("theme").click()
    page.wait_for_function("() => document.body.classList.contains('body--dark')")
    page.reload()  # the theme is remembered
    page.wait_for_function("() => document.body.classList.contains('body--dark')")
    page.get_by_test_id("loss-chart").wait_for()
    screenshot(page, "session-detail-dark-zh-CN")
    page.get_by_test_id("language").click()
    page.get_by_test_id("lang-en").click()
    page.get_by_text("All sessions").wait_for()


def test_network_page_shows_the_dht_and_a_join_command(page: Any, server: Server) -> None:
    created = server.api("POST", "/sessions", {"name": "volunteers welcome", "autoStart": False,
                                               "distributedConfig": {"strategy": "diloco", "innerSteps": 50}})
    page.goto("/network")
    page.get_by_test_id("dht-status").filter(has_text="Running").wait_for(timeout=30_000)
    command = page.get_by_test_id("join-command").first.text_content()
    assert f"cotrain join --server {server.url} --session {created['id']}" in command
    assert page.get_by_text("/p2p/").count() >= 1
    screenshot(page, "network")


def test_cancel_a_draft_from_its_page(page: Any, server: Server) -> None:
    created = server.api("POST", "/sessions", {"name": "changed my mind", "autoStart": False})
    page.goto(f"/sessions/{created['id']}")
    sign_in(page)
    page.get_by_test_id("status-badge").filter(has_text="Draft").wait_for()
    page.get_by_test_id("action-cancel").click()
    page.get_by_test_id("status-badge").filter(has_text="Cancelled").wait_for()
    page.get_by_test_id("action-retry").wait_for()
    assert server.api("GET", f"/sessions/{created['id']}")["status"] == "cancelled"


def test_a_private_session_updates_live_for_its_owner(page: Any, server: Server) -> None:
    """Messages of a private session reach only its owner and admins: the page subscribes as the
    signed-in user, so the owner (not an admin) watches it live."""
    import json
    import urllib.request

    bob = server.api("POST", "/auth/tokens", {"name": "bob"})["token"]
    request = urllib.request.Request(
        server.url + "/api/v1/sessions", method="POST",
        data=json.dumps({**TINY, "name": "bob's private run", "public": False, "autoStart": False}).encode(),
        headers={"Authorization": f"Bearer {bob}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        session_id = json.loads(response.read())["id"]
    page.goto(f"/sessions/{session_id}")
    ready(page)
    page.get_by_test_id("sign-in").click()
    page.get_by_test_id("token-input").fill(bob)
    page.get_by_test_id("token-submit").click()
    page.get_by_test_id("account").filter(has_text="bob").wait_for()
    page.get_by_test_id("progress-percent").wait_for()
    ready(page)
    page.evaluate(WATCH)
    page.get_by_test_id("action-start").click()
    page.get_by_test_id("status-badge").filter(has_text="Completed").wait_for(timeout=150_000)
    page.wait_for_function("() => window.__percents.has('100%')")
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    assert len(page.evaluate("[...window.__points]")) >= 2, "the loss chart of the private session did not grow live"
    # the later tests show the latest completed session to a visitor: leave no private one behind
    request = urllib.request.Request(server.url + f"/api/v1/sessions/{session_id}", method="DELETE",
                                     headers={"Authorization": f"Bearer {bob}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 204


def test_rewards_page_without_a_wallet(page: Any, server: Server) -> None:
    page.goto("/rewards")
    page.get_by_test_id("rewards-state").wait_for()
    screenshot(page, "rewards")


def test_rewards_after_wallet_sign_in(page: Any, server: Server) -> None:
    from aptos_sdk import ed25519
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from cotrain.chain.ledger import Ledger
    from cotrain.chain.settlement import set_reward_pool, settle_session
    from tests.chain.browser_wallet import inject_wallet
    from tests.chain.test_ledger import Rec
    from tests.chain.wallets import Wallet
    from tests.ui.conftest import LEDGER_KEY

    wallet, other = Wallet.create(), Wallet.create()
    session_id = server.api("GET", "/sessions?limit=1&status=completed")["items"][0]["id"]
    ledger = Ledger(ed25519.PrivateKey.from_hex(LEDGER_KEY))
    engine = create_engine(f"sqlite:///{server.home / 'cotrain.db'}")
    with sessionmaker(engine).begin() as db:  # what the completion hook records for a volunteer run
        set_reward_pool(db, ledger, session_id, 5 * 10**8, "APT")
        settle_session(db, ledger, session_id, [Rec("12D3KooWVolunteerA1", wallet.address, 30_000, session_id),
                                                Rec("12D3KooWVolunteerB2", other.address, 10_000, session_id)],
                       require_binding=False)
    engine.dispose()
    inject_wallet(page, wallet, server.url)
    page.goto("/rewards")
    ready(page)
    page.get_by_test_id("connect-wallet").click()
    page.get_by_test_id("wallet-address").wait_for()
    assert wallet.address in page.get_by_test_id("wallet-address").text_content()
    page.get_by_text("3.75 APT").wait_for()  # 30k of 40k tokens: 3/4 of the 5 APT pool
    screenshot(page, "rewards-connected")


def test_every_page_renders_fast_with_100_sessions(page: Any, server: Server) -> None:
    for i in range(100 - len(server.api("GET", "/sessions?limit=500")["items"])):
        server.api("POST", "/sessions", {"name": f"community run {i:03d}", "autoStart": False})
    detail = server.api("GET", "/sessions?limit=1&status=completed")["items"][0]["id"]
    pages = {
        "/": "sessions-table", "/sessions/new": "toml-preview", f"/sessions/{detail}": "loss-chart",
        "/models": "models-table", "/network": "dht-status", "/rewards": "rewards-state",
    }
    timings = {}
    for path, testid in pages.items():
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            page.goto(path)
            page.get_by_test_id(testid).first.wait_for()
            best = min(best, time.perf_counter() - start)
        timings[path] = best
    print("\nrender time with 100 sessions (best of 3, navigation to first paint of the main element):")
    for path, seconds in timings.items():
        print(f"  {path:32s} {seconds * 1000:7.0f} ms")
    page.goto("/")
    page.get_by_test_id("sessions-table").locator("tbody tr").nth(20).wait_for()
    screenshot(page, "sessions-100")
    ready(page)
    page.get_by_test_id("search").fill("community run 05")
    page.get_by_test_id("sessions-table").get_by_text("1–10 of 10").wait_for()
    assert page.get_by_test_id("sessions-table").locator("tbody tr").count() == 10
    assert max(timings.values()) < 3.0, timings  # the target is 1 s; the printed figures are the measure
