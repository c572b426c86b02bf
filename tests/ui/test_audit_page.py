"""The Audit page in a real browser: an admin sees the audit log newest first, filters it and checks the
hash chain; members and anonymous visitors see neither the nav entry nor the log. Screenshot:
docs/screenshots/audit.png (1280×800)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.chain.wallets import Wallet
from tests.ui.conftest import Server, api_status, ready, screenshot, sign_in

pytestmark = pytest.mark.browser




@pytest.fixture(scope="module")
def member(server: Server) -> str:
    """A member's token, and a few things worth auditing: refusals, a failed and a good sign-in."""
    token = server.api("POST", "/auth/tokens", {"name": "audit-member", "role": "member"})["token"]
    assert api_status(server, "POST", "/sessions", token, {"name": "pool", "autoStart": False,
                                                        "rewardPool": {"amount": 10**12}}) == 403
    assert api_status(server, "GET", "/audit", token) == 403
    wallet = Wallet.create()
    with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
        challenge = client.post("/auth/nonce", json={"address": wallet.address}).json()
        for changed in (" (forged)", ""):
            signed = wallet.sign_message(message=challenge["message"] + changed, nonce=challenge["nonce"],
                                         application=challenge["application"], chain_id=challenge["chainId"])
            client.post("/auth/verify", json={"address": wallet.address, "publicKey": wallet.public_key, **signed})
    server.api("POST", "/auth/tokens", {"name": "ci-bot", "role": "maintainer"})
    return token


def test_members_and_visitors_see_no_audit_log(page: Any, server: Server, member: str) -> None:
    page.goto("/audit")
    page.get_by_test_id("audit-not-allowed").wait_for()
    assert page.get_by_test_id("audit-table").count() == 0
    assert page.get_by_test_id("nav-audit").count() == 0
    sign_in(page, member)
    page.goto("/audit")
    page.get_by_test_id("audit-not-allowed").wait_for()
    assert page.get_by_test_id("nav-audit").count() == 0
    assert page.get_by_test_id("audit-table").count() == 0


def test_admin_filters_the_audit_log_and_verifies_the_chain(page: Any, server: Server, member: str) -> None:
    page.goto("/")
    sign_in(page)
    page.get_by_test_id("nav-audit").click()
    page.wait_for_url("**/audit")
    table = page.get_by_test_id("audit-table")
    table.locator("tbody tr").first.wait_for()
    rows = table.locator("tbody tr").all_text_contents()
    # this module's maintainer token is listed (other tests on the shared server may have acted since)
    assert any("token.create" in row for row in rows), rows
    ready(page)

    action = page.get_by_test_id("filter-action")
    action.fill("auth.*")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=audit-table] tbody tr')]"
                           ".every(tr => tr.textContent.includes('auth.'))")
    texts = table.locator("tbody tr").all_text_contents()
    assert any("auth.sign_in" in t and "Refused" in t for t in texts), texts
    assert any("auth.sign_in" in t and "OK" in t and "wallet:" in t for t in texts), texts
    action.fill("")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=audit-table] tbody tr')]"
                           ".some(tr => tr.textContent.includes('token.create'))")

    page.get_by_test_id("verify-chain").click()
    verdict = page.get_by_test_id("verdict")
    verdict.wait_for()
    assert "chain intact" in verdict.text_content()
    page.mouse.move(640, 780)  # not hovering the button
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "audit")
