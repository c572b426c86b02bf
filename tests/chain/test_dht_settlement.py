"""Three volunteer peers with three wallets publish signed progress records on a real hivemind DHT
(loopback); the server side reads them with cotrain.p2p.records.fetch_progress every tick, keeps them
(ChainService.keep) and settles at completion. The split follows the contributions, `cotrain ledger verify`
passes, and fails once one DB row is edited by hand."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from aptos_sdk import ed25519
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
        # Each volunteer's peer is bound to its wallet (the two signatures are checked in test_bindings.py).
        with factory.begin() as db:
            for i, w in enumerate(wallets):
                bind_peer(db, SESSION, f"peer{i}", w.address, BindingProof.PEER_AND_WALLET)
        for rnd in range(3):  # three outer rounds; peer i processes 640·(i+1) tokens per round
            time.sleep(0.5)  # rounds take time: tokens reported faster than a CPU can go are refused
            deadline = time.time() + 60  # generous: a loaded CI machine slows the DHT down
            while True:  # peers publish every few seconds; the server's monitor ticks in between
                for i, ((dht, validator), w) in enumerate(zip(peers, wallets, strict=True)):
                    tokens = 640 * (i + 1) * (rnd + 1)
                    records.publish_progress(dht, validator, PeerProgress(
                        peer_id=f"peer{i}", session_id=SESSION, step=10 * (rnd + 1), outer_step=rnd,
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
        db.execute(text("UPDATE chain_contributions SET tokens = tokens + 1 WHERE peer_id = 'peer2'"))
    bad = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "chain_contributions" in bad.stderr
