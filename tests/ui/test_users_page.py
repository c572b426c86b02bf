"""The Users page in a real browser: admins see every wallet and API token, change a role with the
selector, revoke and ban a wallet and lift the ban; members and anonymous visitors see neither the
nav entry nor the page. Screenshot: docs/screenshots/users.png (1280×800)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chain.wallets import Wallet
from tests.ui.conftest import Server, api_status, ready, screenshot, sign_in

pytestmark = pytest.mark.browser


def wallet_token(server: Server, wallet: Wallet) -> str:
    """A wallet sign-in the way a browser wallet does it; returns the wallet token."""
    from tests.security.conftest import wallet_sign_in

    token, _ = wallet_sign_in(server, wallet)  # type: ignore[arg-type]  (needs only .url)
    return token




def choose(page: Any, testid: str, option: str) -> None:
    """Pick `option` in a Quasar select (opening its menu once more if the first click came too early)."""
    item = page.locator(".q-menu .q-item").get_by_text(option, exact=True)
    for _ in range(3):
        page.get_by_test_id(testid).click()
        try:
            item.wait_for(timeout=3000)
            break
        except Exception:
            continue
    item.click()


def test_admin_changes_roles_revokes_and_bans_in_the_users_page(page: Any, server: Server) -> None:
    member, banned, maintainer = Wallet.create(), Wallet.create(), Wallet.create()
    tokens = {w.address: wallet_token(server, w) for w in (member, banned, maintainer)}
    server.api("PUT", f"/users/{maintainer.address}/role", {"role": "maintainer"})
    server.api("POST", "/auth/tokens", {"name": "ci bot", "role": "member"})

    page.goto("/users")
    page.get_by_test_id("not-allowed").wait_for()  # anonymous
    assert page.get_by_test_id("nav-users").count() == 0
    sign_in(page)
    page.get_by_test_id("nav-users").click()
    table = page.get_by_test_id("users-table")
    table.get_by_text("ci bot").wait_for()
    ready(page)
    assert table.get_by_text(member.address[:10]).count() == 1
    assert page.get_by_test_id(f"status-{maintainer.address}").text_content() == "Active"

    # a role, with the selector
    choose(page, f"role-{member.address}", "Maintainer")
    page.get_by_text("is now Maintainer").wait_for()
    assert server.api("GET", f"/users/{member.address}")["role"] == "maintainer"
    audited = server.api("GET", f"/audit?action=user.role_set&target={member.address}")["items"]
    admin = f"token:{server.api('GET', '/auth/me')['id']}"
    assert [(e["actor"], e["outcome"], e["detail"]["via"], e["detail"]["role"]) for e in audited] == [
        (admin, "ok", "ui", "maintainer")]

    # revoke and ban, then lift the ban
    page.get_by_test_id(f"revoke-{banned.address}").click()
    page.get_by_test_id("revoke-ban").click()
    page.get_by_test_id("revoke-confirm").click()
    page.wait_for_function("a => document.querySelector(`[data-testid='status-${a}']`)?.textContent === 'Banned'",
                           arg=banned.address)
    assert api_status(server, "GET", "/auth/me", tokens[banned.address]) == 401
    assert server.api("GET", f"/users/{banned.address}")["revoked"] is True
    page.get_by_text("access revoked and banned").wait_for()
    page.wait_for_timeout(700)  # the notification's entry transition
    screenshot(page, "users")
    page.get_by_test_id(f"unban-{banned.address}").click()
    page.wait_for_function("a => document.querySelector(`[data-testid='status-${a}']`)?.textContent === 'Active'",
                           arg=banned.address)
    assert server.api("GET", f"/users/{banned.address}")["revoked"] is False
    assert api_status(server, "GET", "/auth/me", tokens[member.address]) == 200  # the others were not touched

    # the filters
    choose(page, "kind-filter", "API token")
    page.wait_for_function("() => !document.querySelector('[data-testid=users-table]').textContent.includes('0x')")
    assert table.get_by_text("ci bot").count() == 1


def test_the_last_admin_is_kept_in_the_users_page(page: Any, server: Server) -> None:
    admin_id = server.api("GET", "/auth/me")["id"]
    page.goto("/users")
    sign_in(page)
    ready(page)
    choose(page, f"role-token:{admin_id}", "Member")
    page.get_by_text("This is the last admin").wait_for()
    assert server.api("GET", "/auth/me")["role"] == "admin"


def test_members_see_no_users_page(page: Any, server: Server) -> None:
    token = server.api("POST", "/auth/tokens", {"name": "a member", "role": "member"})["token"]
    page.goto("/")
    sign_in(page, token)
    assert page.get_by_test_id("nav-users").count() == 0
    page.goto("/users")
    page.get_by_test_id("not-allowed").wait_for()
    assert "Only admins" in page.get_by_test_id("not-allowed").text_content()
    assert page.get_by_test_id("users-table").count() == 0
