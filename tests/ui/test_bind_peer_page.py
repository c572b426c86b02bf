"""The Rewards page's "Bind a running peer" card: a signed-in volunteer pastes the token that
`cotrain rewards peer-signature` printed on the peer's machine, the browser wallet (a fake Petra whose key the test
holds) signs the binding with signMessage, and the server binds the peer (a real server, a real browser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.ui.conftest import Server, ready, screenshot


def test_bind_a_running_peer_with_the_browser_wallet(page: Any, server: Server, tmp_path: Path, request) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker
    from typer.testing import CliRunner

    from cotrain.chain.bindings import bound_wallets
    from cotrain.cli import app as cli
    from cotrain.p2p.identity import load_or_create_identity
    from cotrain.p2p.peer_keys import peer_id_of
    from tests.chain.browser_wallet import inject_wallet
    from tests.chain.wallets import Wallet

    wallet, other = Wallet.create(), Wallet.create()
    session_id = server.api("POST", "/sessions", {"name": "bind run", "autoStart": False})["id"]
    # the package's server is shared, and the sessions pages' tests start from an empty list
    request.addfinalizer(lambda: server.api("DELETE", f"/sessions/{session_id}"))
    identity_file = tmp_path / "peer" / "p2p-identity.key"
    peer_id = peer_id_of(load_or_create_identity(identity_file).get_public_key())

    def token_for(address: str) -> str:  # run on the peer's machine
        out = CliRunner().invoke(cli, ["rewards", "peer-signature", "--session", session_id, "--wallet", address,
                                       "--peer-key-file", str(identity_file)])
        assert out.exit_code == 0, out.output
        return out.stdout.strip()

    signed = inject_wallet(page, wallet, server.url)
    page.goto("/rewards")
    ready(page)
    page.get_by_test_id("connect-wallet").click()
    card = page.get_by_test_id("bind-peer")
    card.wait_for()
    result = page.get_by_test_id("bind-result")

    # a token made for another wallet is refused before the wallet is asked to sign
    page.get_by_test_id("peer-token").fill(token_for(other.address))
    page.get_by_test_id("bind-peer-button").click()
    page.get_by_text(f"This token was made for wallet {other.address}").wait_for()
    assert result.text_content().startswith("Not bound: ") and len(signed) == 1  # only the sign-in was signed

    page.get_by_test_id("peer-token").fill(token_for(wallet.address))
    page.get_by_test_id("bind-peer-button").click()
    page.get_by_text(f"Peer {peer_id} is bound to this wallet in session {session_id}.").wait_for()
    assert len(signed) == 2 and signed[1]["message"].startswith("CoTrain peer binding, the wallet's half\n")
    engine = create_engine(f"sqlite:///{server.home / 'cotrain.db'}")
    with sessionmaker(engine)() as db:
        assert bound_wallets(db, session_id) == {peer_id: wallet.address}
    engine.dispose()
    assert page.get_by_test_id("peer-token").input_value() == ""  # cleared for the next peer
    card.scroll_into_view_if_needed()
    screenshot(page, "rewards-bind-peer")
