"""A real browser (Debian's chromium via Playwright) signs in with a wallet whose key the test holds, sees its
contributions, and a replayed signature is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.responses import FileResponse, HTMLResponse

import cotrain.chain
from cotrain.chain.settlement import set_reward_pool, settle_session
from tests.conftest import missing_service

from .browser_wallet import inject_wallet
from .test_api import api  # noqa: F401  (the uvicorn-served API fixture)
from .test_ledger import Rec
from .wallets import Wallet

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
JS = Path(cotrain.chain.__file__).parent / "wallet_signin.js"

PAGE = """<!doctype html><html><body>
<button id="connect">Connect wallet</button> <span id="who"></span> <div id="error"></div>
<table id="contributions"></table>
<script src="/wallet_signin.js"></script>
<script>
document.getElementById("connect").onclick = async () => {
  try {
    const me = await cotrainWalletSignIn("/api/v1");
    document.getElementById("who").textContent = me.address;
    const rows = await fetch("/api/v1/me/contributions", {credentials: "same-origin"}).then(r => r.json());
    document.getElementById("contributions").innerHTML = rows.map(
      c => `<tr><td>${c.peerId}</td><td>${c.tokens}</td><td>${c.status}</td></tr>`).join("");
  } catch (e) { document.getElementById("error").textContent = e.message; }
};
</script></body></html>"""


def test_wallet_sign_in_in_browser_then_replay_refused(api, db_factory):  # noqa: F811
    if CHROMIUM is None:
        missing_service("chromium is not installed: `apt-get install -y chromium` (see the Makefile's browser target)")
    chain, origin = api.chain, api.origin
    wallet = Wallet.create()
    with chain.factory.begin() as db:
        set_reward_pool(db, chain.ledger, "s1", 1000, "APT")
        settle_session(db, chain.ledger, "s1", [Rec("gpu-peer", wallet.address, 4242)], require_binding=False)
    # The test page: added to the running app, as the UI will serve its own.
    app = api.app
    app.add_api_route("/", lambda: HTMLResponse(PAGE), include_in_schema=False)
    app.add_api_route("/wallet_signin.js", lambda: FileResponse(JS, media_type="text/javascript"),
                      include_in_schema=False)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            signed = inject_wallet(page, wallet, origin)
            page.goto(origin + "/")
            page.click("#connect")
            page.wait_for_selector("#contributions tr", timeout=15_000)
            assert page.inner_text("#who") == wallet.address
            assert page.inner_text("#contributions").split() == ["gpu-peer", "4242", "verified"]
            assert page.inner_text("#error") == ""

            replay = {"address": wallet.address, "publicKey": wallet.public_key,
                      "fullMessage": signed[0]["fullMessage"], "signature": signed[0]["signature"]}
            result = page.evaluate("""async body => {
                const r = await fetch('/api/v1/auth/verify', {method: 'POST', headers: {'Content-Type':
                    'application/json'}, body: JSON.stringify(body)});
                return {status: r.status, body: await r.json()};
            }""", replay)
            assert result["status"] == 401 and result["body"]["detail"]["reason"] == "replay", json.dumps(result)
        finally:
            browser.close()

