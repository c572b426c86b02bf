"""A real server with the web UI (uvicorn, loopback, temp COTRAIN_HOME) and Debian's chromium
driven by Playwright. Pages collect console errors; a test fails if any appeared."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, missing_service

CHROMIUM = os.environ.get("COTRAIN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
ADMIN_TOKEN = "ct_ui_test_admin_token"
LEDGER_KEY = "0x" + "17" * 32  # the server's ledger key, so a test can settle rewards into its database
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}

# the tiny run of the engine every UI test trains (seconds on a CPU)
TINY = {
    "modelConfig": {"type": "llama2", "size": "debug", "precision": "fp32"},
    "trainingConfig": {"batchSize": 8, "maxSteps": 40, "logInterval": 2, "evalInterval": 10},
    "dataConfig": {"dataset": "stdlib", "maxBytes": 300000, "seqLength": 64, "vocabSize": 512},
}



@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen[bytes]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.url + "/api/v1" + path, method=method, data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def wait_status(self, session_id: str, wanted: str = "completed", timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.api("GET", f"/sessions/{session_id}")
            if row["status"] == wanted:
                return row
            if row["status"] in ("failed", "cancelled") and wanted not in ("failed", "cancelled"):
                raise AssertionError(f"session {session_id} ended {row['status']}: {row['error']}")
            time.sleep(0.5)
        raise AssertionError(f"session {session_id} did not become {wanted} in {timeout} s")


@contextlib.contextmanager
def running_server(home: Path, **extra_env: str) -> Iterator[Server]:
    """`uvicorn cotrain.ui.app` on a free loopback port with its home in `home` (a test module that
    needs another server than the package's, e.g. one on Redis, starts its own)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_LEDGER_KEY=LEDGER_KEY,
        APTOS_NETWORK="testnet", COTRAIN_START_DHT="1", HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
    )
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.update(extra_env)
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "cotrain.ui.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/api/v1/health", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start:\n{(home / 'server.log').read_text()[-4000:]}")
            time.sleep(0.3)
    try:
        yield Server(url, home, process)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("ui-home")) as started:
        yield started


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        missing_service(f"no chromium at {CHROMIUM}: `apt-get install -y chromium` (see the Makefile's browser target)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@dataclass
class Console:
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser context (own cookies) at 1280×800 that records console errors."""
    context = browser.new_context(viewport=VIEWPORT, base_url=server.url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    console = Console()
    tab.on("console", lambda m: console.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: console.errors.append(f"pageerror: {e}"))
    yield tab
    context.close()
    assert console.errors == [], f"console errors in the browser: {console.errors}"


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # let charts and transitions settle
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def ready(page: Any) -> None:
    """Wait until the page's NiceGUI connection is up (input before it would be lost)."""
    page.wait_for_function("() => window.did_handshake === true")


def sign_in(page: Any, token: str = ADMIN_TOKEN) -> None:
    """Sign the page in with `token` (default the admin's) through the sign-in dialog."""
    ready(page)
    page.get_by_test_id("sign-in").click()
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("token-submit").click()
    page.get_by_test_id("account").wait_for()


def api_status(server: Server, method: str, path: str, token: str | None, body: dict[str, Any] | None = None) -> int:
    """The HTTP status of one API call (`path` under /api/v1) with `token`."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(server.url + "/api/v1" + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
