"""Volunteer peers with wallets publish signed progress records on a real hivemind DHT (loopback); the
server side reads them with cotrain.p2p.records.fetch_progress every tick, keeps them (ChainService.keep)
and settles at completion.

* Three peers, three wallets: the split follows the contributions, `cotrain ledger verify` passes, and
  fails once one DB row is edited by hand.
* Two sessions, with peers whose records cannot be true (10^13 tokens, NaN, negative counters) beside
  honest ones: each bad record is skipped alone and both sessions still settle for their honest peers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from aptos_sdk import ed25519
from hivemind.utils import get_dht_time
from sqlalchemy import text

from cotrain.chain.bindings import bind_peer
from cotrain.chain.orm import BindingProof
from cotrain.chain.service import ChainService
from cotrain.db import open_database
from cotrain.p2p.progress import PeerProgress

from .wallets import Wallet

records = pytest.importorskip("cotrain.p2p.records")
dht_mod = pytest.importorskip("cotrain.p2p.dht")
RSAPrivateKey = pytest.importorskip("hivemind.utils.crypto").RSAPrivateKey
RSASignatureValidator = pytest.importorskip("hivemind.dht.crypto").RSASignatureValidator

CONFIG = {"train": {"batch_size": 4}, "data": {"seq_length": 64},
          "distributed": {"strategy": "diloco", "diloco": {"inner_steps": 10}}}
SESSION = "dilo3"


def test_three_wallets_on_a_real_dht(tmp_path, monkeypatch):
    env = {**os.environ, "COTRAIN_HOME": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
           "COTRAIN_LEDGER_KEY": ed25519.PrivateKey.random().hex()}
    for k in ("COTRAIN_HOME", "DATABASE_URL", "COTRAIN_LEDGER_KEY"):
        monkeypatch.setenv(k, env[k])
    _, factory = open_database(env["DATABASE_URL"])
    chain = ChainService(factory, lambda _session_id: None, lambda *_: None)
    chain.session_created(SESSION, 600_000_000, "APT")

    server = dht_mod.start_dht()
    peers, wallets = [], [Wallet.create() for _ in range(3)]
    try:
        for _ in wallets:
            key = RSAPrivateKey()
            peers.append((dht_mod.start_dht(initial_peers=dht_mod.visible_maddrs(server), private_key=key),
                          RSASignatureValidator(key)))
        peer_ids = [str(dht.peer_id) for dht, _ in peers]  # a peer is its signing key: the id derives from it
        # Each volunteer's peer is bound to its wallet (the two signatures are checked in test_bindings.py).
        with factory.begin() as db:
            for peer_id, w in zip(peer_ids, wallets, strict=True):
                bind_peer(db, SESSION, peer_id, w.address, BindingProof.PEER_AND_WALLET)
        for rnd in range(3):  # three outer rounds; peer i processes 640·(i+1) tokens per round
            time.sleep(0.5)  # rounds take time: tokens reported faster than a CPU can go are refused
            deadline = time.time() + 60  # generous: a loaded CI machine slows the DHT down
            while True:  # peers publish every few seconds; the server's monitor ticks in between
                for i, ((dht, validator), w) in enumerate(zip(peers, wallets, strict=True)):
                    tokens = 640 * (i + 1) * (rnd + 1)
                    records.publish_progress(dht, validator, PeerProgress(
                        peer_id=peer_ids[i], session_id=SESSION, step=10 * (rnd + 1), outer_step=rnd,
                        tokens_per_second=800.0, samples=tokens // 64, tokens=tokens, wallet=w.address,
                        device="cpu"), ttl=30)
                seen = records.fetch_progress(server, SESSION)
                if ({r.outer_step for r in seen} == {rnd} and len(seen) == 3) or time.time() > deadline:
                    break
                time.sleep(1.0)
            assert len(seen) == 3 and {r.outer_step for r in seen} == {rnd}, "the DHT did not show this round"
            chain.keep(seen)
        rewards = chain.settle(SESSION, CONFIG)
    finally:
        for dht, _ in peers:
            dht.shutdown()
        server.shutdown()

    split = {r.address: r.amount for r in rewards}
    assert split == {wallets[0].address: 100_000_000, wallets[1].address: 200_000_000,
                     wallets[2].address: 300_000_000}
    cli = [sys.executable, "-c", "from cotrain.cli import main; main()", "ledger", "verify"]
    ok = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    with factory.begin() as db:
        db.execute(text("UPDATE chain_contributions SET tokens = tokens + 1 WHERE peer_id = :peer"),
                   {"peer": peer_ids[2]})
    bad = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "chain_contributions" in bad.stderr


def _signed(dht, session_id: str, tokens, samples, tokens_per_second=800.0) -> bool:
    """A record signed by `dht`'s own key and naming its own peer id: only its numbers can be wrong."""
    body = {"peer_id": str(dht.peer_id), "session_id": session_id, "step": 10, "outer_step": 0,
            "tokens_per_second": tokens_per_second, "samples": samples, "tokens": tokens, "wallet": "0x1",
            "device": "cpu", "updated": get_dht_time()}
    return bool(dht.store(records.progress_key(session_id), body, expiration_time=get_dht_time() + 60,
                          subkey=dht_mod.signer(dht).local_public_key))


def test_records_that_cannot_be_true_never_block_settlement(tmp_path, monkeypatch):
    """Session A: two honest peers and three whose records say 10^13 tokens, NaN tokens and negative samples;
    session B: one honest peer. Each bad record is skipped by itself, read from the DHT or handed in directly,
    and both sessions settle for their honest peers."""
    monkeypatch.setenv("COTRAIN_LEDGER_KEY", ed25519.PrivateKey.random().hex())
    _, factory = open_database(f"sqlite:///{tmp_path / 'c.db'}")
    chain = ChainService(factory, lambda _session_id: None, lambda *_: None)
    wallets = {name: Wallet.create() for name in ("a1", "a2", "b1")}
    for session_id in ("sess-a", "sess-b"):
        chain.session_created(session_id, 600_000_000, "APT")

    server = dht_mod.start_dht()
    nodes = {name: dht_mod.start_dht(initial_peers=dht_mod.visible_maddrs(server))
             for name in ("a1", "a2", "b1", "huge", "nan", "negative")}
    try:
        with factory.begin() as db:
            for name, w in wallets.items():
                bind_peer(db, f"sess-{name[0]}", str(nodes[name].peer_id), w.address, BindingProof.PEER_AND_WALLET)
        for name, (session_id, tokens) in {"a1": ("sess-a", 640), "a2": ("sess-a", 1280),
                                           "b1": ("sess-b", 1920)}.items():
            assert records.publish_progress(nodes[name], dht_mod.signer(nodes[name]), PeerProgress(
                peer_id="", session_id=session_id, step=10, outer_step=0, tokens_per_second=800.0,
                samples=tokens // 64, tokens=tokens, wallet=wallets[name].address, device="cpu"), ttl=60)
        assert _signed(nodes["huge"], "sess-a", tokens=10**13, samples=10**11 - 1)
        assert _signed(nodes["nan"], "sess-a", tokens=float("nan"), samples=10)
        assert _signed(nodes["negative"], "sess-a", tokens=640, samples=-10)
        raw = server.get(records.progress_key("sess-a"), latest=True)
        assert raw is not None and len(raw.value) == 5, "the bad records must reach the reader"
        seen = {sid: records.fetch_progress(server, sid) for sid in ("sess-a", "sess-b")}
    finally:
        for node in [*nodes.values(), server]:
            node.shutdown()

    assert {r.peer_id for r in seen["sess-a"]} == {str(nodes["a1"].peer_id), str(nodes["a2"].peer_id)}
    # and records that never went through the DHT reader (built in-process, or an old kept row) are checked too
    forged = [PeerProgress(peer_id=str(nodes[name].peer_id), session_id="sess-a", step=10, outer_step=0,
                           tokens_per_second=800.0, samples=samples, tokens=tokens, wallet="0x1", device="cpu",
                           updated=time.time())
              for name, tokens, samples in (("huge", 10**13, 10), ("nan", float("nan"), 10), ("negative", -1, 10))]
    chain.keep([*seen["sess-a"], *forged, *seen["sess-b"]])
    paid = {sid: {r.address: r.amount for r in chain.settle(sid, CONFIG, last_records=forged)}
            for sid in ("sess-a", "sess-b")}
    assert paid == {"sess-a": {wallets["a1"].address: 200_000_000, wallets["a2"].address: 400_000_000},
                    "sess-b": {wallets["b1"].address: 600_000_000}}
