"""A session whose Slurm job waits in Slurm's queue shows Slurm's reason on its page, live (issue 15): the
web UI's server runs its embedded executor with COTRAIN_EXECUTOR=slurm on the package's real cluster, and
every job is submitted held (`--hold`), so it stays pending with reason JobHeldUser until it is cancelled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing_service
from tests.ui.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TINY,
    VIEWPORT,
    Server,
    ready,
    running_server,
    screenshot,
    sign_in,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium for this test alone (tests/ui's package-scoped one would stay open into tests/ui, where a second
    Playwright cannot start inside the first one's event loop)."""
    if not Path(CHROMIUM).exists():
        missing_service(f"no chromium at {CHROMIUM}: `apt-get install -y chromium` (see the Makefile's browser target)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def slurm_ui(slurm_cluster: Any, tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path, COTRAIN_EXECUTOR="slurm", COTRAIN_SLURM_GPUS="0",
                        COTRAIN_SLURM_EXTRA_SBATCH="--hold") as server:
        yield server


def test_the_session_page_shows_why_its_slurm_job_waits(browser: Any, slurm_ui: Server) -> None:
    context = browser.new_context(viewport=VIEWPORT, base_url=slurm_ui.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        page.goto("/")
        sign_in(page)
        session = slurm_ui.api("POST", "/sessions", {"name": "held by Slurm", **TINY})
        page.goto(f"/sessions/{session['id']}")
        ready(page)
        step = page.get_by_test_id("progress-step")
        # the reason is on the page when it opens, or arrives live when the job is submitted after
        page.wait_for_function("() => document.querySelector('[data-testid=progress-step]')"
                               ".textContent.includes('JobHeldUser')", timeout=60_000)
        assert "Waiting for Slurm: job" in step.text_content()
        assert slurm_ui.api("GET", f"/sessions/{session['id']}")["status"] == "starting"
        screenshot(page, "session-slurm-pending")
        slurm_ui.api("POST", f"/sessions/{session['id']}/cancel")
        slurm_ui.wait_status(session["id"], "cancelled", timeout=60)
        page.get_by_test_id("status-badge").filter(has_text="Cancelled").wait_for(timeout=30_000)
        assert "JobHeldUser" not in step.text_content()
    finally:
        context.close()
