"""The server's hooks: progress snapshots kept per outer round, then settlement at completion, with the
distributed part's own PeerProgress records."""

from __future__ import annotations

import pytest
from aptos_sdk import ed25519
from sqlalchemy import select

from cotrain.chain.hooks import limits_from_config, on_progress, on_session_completed, on_session_created
from cotrain.chain.orm import ContributionRow, PayoutRow
from cotrain.chain.runtime import platform_ledger
from cotrain.chain.service import bind_peer

from .wallets import Wallet

PeerProgress = pytest.importorskip("cotrain.p2p.records").PeerProgress

CONFIG = {"train": {"batch_size": 4}, "data": {"seq_length": 64},
          "distributed": {"strategy": "diloco", "diloco": {"inner_steps": 10}}}  # ≤ 2560 tokens per round


@pytest.fixture(autouse=True)
def ledger_key(monkeypatch):
    monkeypatch.setenv("COTRAIN_LEDGER_KEY", ed25519.PrivateKey.random().hex())


def test_limits_from_config():
    assert limits_from_config(CONFIG).tokens_per_outer_round == 2560
    assert limits_from_config({"distributed": {"strategy": "ddp"}}).tokens_per_outer_round is None


def test_three_peer_diloco_settlement(db_factory):
    wallets = [Wallet.create() for _ in range(3)]
    on_session_created(db_factory, "dl", 3_000_000, "APT")
    for rnd in range(3):  # three outer rounds, snapshots taken as the monitor ticks
        ticks = []
        for i, w in enumerate(wallets):
            tokens = (rnd + 1) * 640 * (i + 1)  # peers 1..3 process 640, 1280, 1920 tokens per round
            ticks.append(PeerProgress(peer_id=f"peer{i}", session_id="dl", step=(rnd + 1) * 10, outer_step=rnd,
                                      tokens_per_second=500.0, samples=tokens // 64, tokens=tokens,
                                      wallet=w.address, device="cpu", updated=100.0 + rnd * 10 + i))
        on_progress(db_factory, ticks)
        on_progress(db_factory, ticks)  # the same records again change nothing
    cheat = PeerProgress(peer_id="peer9", session_id="dl", step=1, outer_step=0, tokens_per_second=500.0,
                         samples=1000, tokens=64_000, wallet=Wallet.create().address, device="cpu", updated=101.0)
    with db_factory.begin() as db:
        for i, w in enumerate(wallets):
            bind_peer(db, "dl", f"peer{i}", w.address, "signature")
        bind_peer(db, "dl", "peer9", cheat.wallet, "signature")
    rewards = on_session_completed(db_factory, "dl", CONFIG, last_records=[cheat])
    assert [r.amount for r in sorted(rewards, key=lambda r: r.amount)] == [500_000, 1_000_000, 1_500_000]
    with db_factory() as db:
        rows = {r.peer_id: r for r in db.scalars(select(ContributionRow))}
        assert rows["peer0"].outer_rounds == 3 and rows["peer0"].tokens == 1920
        assert rows["peer9"].status == "excluded" and "outer round" in rows["peer9"].reason
        assert len(db.scalars(select(PayoutRow)).all()) == 3
        assert platform_ledger().verify(db).ok
    again = on_session_completed(db_factory, "dl", CONFIG)  # idempotent: the same rewards, no new rows
    assert sorted(r.amount for r in again) == [500_000, 1_000_000, 1_500_000]
    with db_factory() as db:
        assert len(db.scalars(select(ContributionRow)).all()) == 4


def test_unbound_peer_is_excluded(db_factory):
    w = Wallet.create()
    on_progress(db_factory, [PeerProgress(peer_id="p", session_id="x", step=1, outer_step=0, tokens_per_second=10.0,
                                          samples=1, tokens=64, wallet=w.address, device="cpu", updated=1.0)])
    on_session_completed(db_factory, "x", CONFIG)
    with db_factory() as db:
        row = db.scalars(select(ContributionRow)).one()
        assert row.status == "excluded" and "not proven" in row.reason
