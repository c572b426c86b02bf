"""The Rewards page of a volunteer whose session had a validator: its verified rounds, and the reasons of its
other rounds with their sentence (a real server, a real browser wallet sign-in)."""

from __future__ import annotations

from typing import Any

from tests.ui.conftest import Server, ready, screenshot


def test_rewards_show_verified_rounds_and_why_the_others_were_not(page: Any, server: Server) -> None:
    from aptos_sdk import ed25519
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from cotrain.chain.ledger import Ledger
    from cotrain.chain.settlement import set_reward_pool, settle_session
    from cotrain.chain.verdicts import record_verdicts
    from cotrain.p2p.verification import REASON_SENTENCES, Reason, Verdict
    from tests.chain.browser_wallet import inject_wallet
    from tests.chain.test_ledger import Rec
    from tests.chain.wallets import Wallet
    from tests.ui.conftest import LEDGER_KEY

    wallet = Wallet.create()
    session_id = server.api("POST", "/sessions", {"name": "validated run", "autoStart": False})["id"]
    peer = "12D3KooWJudgedVolunteer"
    ledger = Ledger(ed25519.PrivateKey.from_hex(LEDGER_KEY))
    engine = create_engine(f"sqlite:///{server.home / 'cotrain.db'}")
    with sessionmaker(engine).begin() as db:  # what the monitor and the completion hook record
        set_reward_pool(db, ledger, session_id, 10**8, "APT")
        for round_, reason in enumerate([Reason.VERIFIED, Reason.LATE, Reason.VERIFIED], start=1):
            verdict = Verdict(session_id=session_id, round=round_, peer_id=peer, reason=reason, detail="",
                              scores={}, tokens=4096 if reason == Reason.VERIFIED else 0)
            record_verdicts(db, ledger, session_id, round_, [verdict], "12D3KooWServerPeer")
        settle_session(db, ledger, session_id, [Rec(peer, wallet.address, 10**9, session_id)], require_binding=False)
    engine.dispose()
    inject_wallet(page, wallet, server.url)
    page.goto("/rewards")
    ready(page)
    page.get_by_test_id("connect-wallet").click()
    table = page.get_by_test_id("contributions")
    table.get_by_text("2 of 3 verified").wait_for()
    table.get_by_text("late × 1").wait_for()  # a late round only does not count (a bad update would void all)
    table.get_by_text(REASON_SENTENCES[Reason.LATE]).wait_for()
    shown = table.text_content()
    assert "8.19K" in shown and "1B" not in shown  # the verified rounds' 8,192 tokens, not the 10**9 the record claimed
    screenshot(page, "rewards-verified-rounds")


def test_a_diloco_session_page_reads_its_verdicts(page: Any, server: Server) -> None:
    """The session page of a DiLoCo session with verdicts loads them (session_view.verified_rounds) and renders
    without a console error."""
    from aptos_sdk import ed25519
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from cotrain.chain.ledger import Ledger
    from cotrain.chain.verdicts import record_verdicts
    from cotrain.p2p.verification import Reason, Verdict
    from tests.ui.conftest import LEDGER_KEY

    body = {"name": "validated diloco", "autoStart": False, "distributedConfig": {"strategy": "diloco",
                                                                                     "innerSteps": 10}}
    session_id = server.api("POST", "/sessions", body)["id"]
    engine = create_engine(f"sqlite:///{server.home / 'cotrain.db'}")
    with sessionmaker(engine).begin() as db:
        verdict = Verdict(session_id=session_id, round=1, peer_id="12D3KooWJudged", reason=Reason.VERIFIED,
                          detail="", scores={}, tokens=10)
        record_verdicts(db, Ledger(ed25519.PrivateKey.from_hex(LEDGER_KEY)), session_id, 1, [verdict], "12D3KooWSrv")
    engine.dispose()
    page.goto(f"/sessions/{session_id}")
    page.get_by_test_id("status-badge").wait_for()
    page.get_by_test_id("peers-table").locator("th").filter(has_text="Verified rounds").wait_for(state="attached")
