"""Tokens in the browser (issue 11): the `?token=` link is exchanged once and leaves the address bar,
the UI's storage files never hold a token in plain text, and a wallet that signs out is signed out
of the UI's pages too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.chain.browser_wallet import inject_wallet
from tests.chain.wallets import Wallet
from tests.ui.conftest import ADMIN_TOKEN, Server, ready

pytestmark = pytest.mark.browser


def _storage_text(home: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in (home / "ui-storage").rglob("*") if path.is_file())


def test_the_sign_in_link_is_exchanged_once_and_kept_sealed(page: Any, server: Server) -> None:
    page.goto(f"/?lang=x&token={ADMIN_TOKEN}")
    ready(page)
    page.get_by_test_id("account").wait_for()
    assert ADMIN_TOKEN not in page.evaluate("location.href") and "lang=x" in page.evaluate("location.search")
    # The storage files (NiceGUI writes them shortly after a change) hold the sign-in sealed, never the token.
    deadline = time.monotonic() + 10
    while "sealed:v1:" not in _storage_text(server.home) and time.monotonic() < deadline:
        time.sleep(0.2)
    stored = _storage_text(server.home)
    assert "sealed:v1:" in stored and ADMIN_TOKEN not in stored
    # The sealed sign-in opens again on the next page (and after the URL lost the token).
    page.goto("/models")
    ready(page)
    page.get_by_test_id("account").wait_for()


def test_a_wrong_link_token_signs_nobody_in_and_still_leaves_the_url(page: Any, server: Server) -> None:
    page.goto("/?token=ct_not_a_real_token")
    ready(page)
    page.get_by_test_id("sign-in").wait_for()
    assert "token" not in page.evaluate("location.href")


def test_a_wallet_that_signs_out_is_signed_out_of_the_rewards_page(page: Any, server: Server) -> None:
    wallet = Wallet.create()
    inject_wallet(page, wallet, server.url)
    page.goto("/rewards")
    ready(page)
    page.get_by_test_id("connect-wallet").click()
    page.get_by_test_id("wallet-address").wait_for()
    cookie = next(c for c in page.context.cookies() if c["name"] == "cotrain_wallet")
    page.evaluate("window.cotrainWalletSignOut('/api/v1')")  # the page's sign-in script: POST /auth/logout
    assert not [c for c in page.context.cookies() if c["name"] == "cotrain_wallet"]  # cleared
    # Even the old cookie, kept (a copy, another tab), no longer signs in: the page checks revocation.
    page.context.add_cookies([cookie])
    page.goto("/rewards")
    ready(page)
    page.get_by_test_id("connect-wallet").wait_for()
    assert page.get_by_test_id("wallet-address").count() == 0
