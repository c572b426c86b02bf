"""The chain's service as the server drives it: progress records read from the DHT kept per outer round
on every tick, then settlement at completion (its config TOML, plus a last DHT read), with the
distributed part's own PeerProgress records."""

from __future__ import annotations

import asyncio
import time

import pytest
from aptos_sdk import ed25519
from sqlalchemy import select

from cotrain.chain.bindings import bind_peer
from cotrain.chain.orm import BindingProof, ContributionRow, PayoutRow, PayoutStatus
from cotrain.chain.runtime import platform_ledger
from cotrain.chain.service import ChainService
from cotrain.chain.settings import ChainSettings
from cotrain.chain.settlement import limits_from_config
from cotrain.p2p.progress import PeerProgress

from .wallets import Wallet

CONFIG = {"train": {"batch_size": 4}, "data": {"seq_length": 64},
          "distributed": {"strategy": "diloco", "diloco": {"inner_steps": 10}}}  # ≤ 2560 tokens per round
CONFIG_TOML = """[train]
batch_size = 4
[data]
seq_length = 64
[distributed]
strategy = "diloco"
[distributed.diloco]
inner_steps = 10
"""


@pytest.fixture(autouse=True)
def ledger_key(monkeypatch):
    monkeypatch.setenv("COTRAIN_LEDGER_KEY", ed25519.PrivateKey.random().hex())


class FakeDht:
    """What the server's DHT node answers: each session's live records (None: unreadable)."""

    def __init__(self) -> None:
        self.live: dict[str, list[PeerProgress]] = {}

    def records(self, session_id: str) -> list[PeerProgress] | None:
        return self.live.get(session_id)


class Book:
    """A SessionBook: the sessions the loop watches."""

    def __init__(self, running: list[str], unsettled: list[tuple[str, str, float]]):
        self.running, self.completed = running, unsettled

    def running_diloco(self) -> list[str]:
        return list(self.running)

    def unsettled(self) -> list[tuple[str, str, float]]:
        return list(self.completed)


@pytest.fixture
def dht() -> FakeDht:
    return FakeDht()


@pytest.fixture
def chain(db_factory, dht, audit) -> ChainService:
    return ChainService(db_factory, dht.records, audit,  # no challenge window: settled at completion
                        settings=ChainSettings(payout_backend="local", challenge_window_s=0))


def test_limits_from_config():
    assert limits_from_config(CONFIG).tokens_per_outer_round == 2560
    assert limits_from_config({"distributed": {"strategy": "ddp"}}).tokens_per_outer_round is None


def test_three_peer_diloco_settlement(db_factory, dht, chain):
    wallets = [Wallet.create() for _ in range(3)]
    chain.session_created("dl", 3_000_000, "APT")
    for rnd in range(3):  # three outer rounds, snapshots taken as the monitor ticks
        ticks = []
        for i, w in enumerate(wallets):
            tokens = (rnd + 1) * 640 * (i + 1)  # peers 1..3 process 640, 1280, 1920 tokens per round
            ticks.append(PeerProgress(peer_id=f"peer{i}", session_id="dl", step=(rnd + 1) * 10, outer_step=rnd,
                                      tokens_per_second=500.0, samples=tokens // 64, tokens=tokens,
                                      wallet=w.address, device="cpu", updated=100.0 + rnd * 10 + i))
        dht.live["dl"] = ticks
        assert chain.capture_progress("dl") == 3
        assert chain.capture_progress("dl") == 3  # the same records again change nothing
    cheat = PeerProgress(peer_id="peer9", session_id="dl", step=1, outer_step=0, tokens_per_second=500.0,
                         samples=1000, tokens=64_000, wallet=Wallet.create().address, device="cpu", updated=101.0)
    with db_factory.begin() as db:
        for i, w in enumerate(wallets):
            bind_peer(db, "dl", f"peer{i}", w.address, BindingProof.SIGNATURE)
        bind_peer(db, "dl", "peer9", cheat.wallet, BindingProof.SIGNATURE)
    dht.live["dl"] = [cheat]  # the last read at completion
    assert chain.session_completed("dl", CONFIG_TOML, finished_at=time.time()) == 3
    rewards = chain.settle("dl", CONFIG)
    assert [r.amount for r in sorted(rewards, key=lambda r: r.amount)] == [500_000, 1_000_000, 1_500_000]
    with db_factory() as db:
        rows = {r.peer_id: r for r in db.scalars(select(ContributionRow))}
        assert rows["peer0"].outer_rounds == 3 and rows["peer0"].tokens == 1920
        assert rows["peer9"].status == "excluded" and "outer round" in rows["peer9"].reason
        assert len(db.scalars(select(PayoutRow)).all()) == 3
        assert platform_ledger().verify(db).ok
    again = chain.settle("dl", CONFIG)  # idempotent: the same rewards, no new rows
    assert sorted(r.amount for r in again) == [500_000, 1_000_000, 1_500_000]
    with db_factory() as db:
        assert len(db.scalars(select(ContributionRow)).all()) == 4


def test_unbound_peer_is_excluded(db_factory, chain):
    w = Wallet.create()
    chain.keep([PeerProgress(peer_id="p", session_id="x", step=1, outer_step=0, tokens_per_second=10.0,
                             samples=1, tokens=64, wallet=w.address, device="cpu", updated=1.0)])
    chain.settle("x", CONFIG)
    with db_factory() as db:
        row = db.scalars(select(ContributionRow)).one()
        assert row.status == "excluded" and "not proven" in row.reason


def test_an_unreadable_dht_keeps_nothing(chain):
    assert chain.capture_progress("nobody") == 0  # the node is not running: None, not an error


def test_the_loop_keeps_settles_and_pays_without_blocking(db_factory, dht, chain, audit):
    """One pass of the server's loop: other workers' running sessions are kept, a completed one is settled,
    and the payouts due are recorded (local backend) with an audit event each."""
    w = Wallet.create()
    chain.session_created("done", 1_000, "APT")
    with db_factory.begin() as db:
        bind_peer(db, "done", "p", w.address, BindingProof.SIGNATURE)
    dht.live["done"] = [PeerProgress(peer_id="p", session_id="done", step=10, outer_step=0, tokens_per_second=100.0,
                                     samples=10, tokens=640, wallet=w.address, device="cpu", updated=1.0)]
    dht.live["run"] = [PeerProgress(peer_id="q", session_id="run", step=1, outer_step=0, tokens_per_second=1.0,
                                    samples=1, tokens=1, wallet=None, device="cpu", updated=1.0)]

    async def one_pass() -> None:
        loop = asyncio.create_task(chain.run(Book(["run"], [("done", CONFIG_TOML, time.time())]), tick_s=30,
                                             payout_interval_s=3600))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if audit.events:
                break
        loop.cancel()

    asyncio.run(one_pass())
    with db_factory() as db:
        assert [r.status for r in db.scalars(select(PayoutRow))] == [PayoutStatus.DUE]
        assert {r.session_id for r in db.scalars(select(ContributionRow))} == {"done"}
    assert audit.actions() == [("payout.recorded_due", "done", True)]
    assert chain.capture_progress("run") == 1
