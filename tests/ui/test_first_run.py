"""A newcomer's first minutes, exactly as `make run` gives them: `cotrain up --example` on an
empty COTRAIN_HOME, the sign-in link, the example session waiting as a draft, one click on
Start, and the run training to completion in the browser."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.ui.conftest import ready

pytestmark = pytest.mark.browser


def test_make_run_newcomer_signs_in_with_the_link_and_starts_the_example(browser: Any, tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "COTRAIN_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for key in ("DATABASE_URL", "REDIS_URL", "COTRAIN_ADMIN_TOKEN"):
        env.pop(key, None)
    log = (tmp_path / "up.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "cotrain.cli", "up", "--example", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
                time.sleep(0.3)
        token = (home / "admin-token").read_text().strip()
        assert oct((home / "admin-token").stat().st_mode & 0o777) == "0o600"
        printed = (tmp_path / "up.log").read_text()
        assert f"{url}/?token={token}" in printed  # shown once, as a sign-in link

        context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=url)
        context.set_default_timeout(20_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"/?token={token}")
        ready(page)
        page.get_by_test_id("account").wait_for()
        page.wait_for_function("() => !location.search.includes('token')")  # dropped from the address bar

        row = page.get_by_test_id("sessions-table").locator("tbody tr", has_text="Your first run")
        row.get_by_text("Draft").wait_for()
        row.click()
        ready(page)
        page.get_by_test_id("action-start").click()
        page.get_by_test_id("status-badge").filter(has_text="Completed").wait_for(timeout=180_000)
        assert page.get_by_test_id("progress-percent").text_content() == "100%"
        context.close()
        assert errors == []
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
