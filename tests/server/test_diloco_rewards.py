"""Rewards end to end: a wallet signs in, is made a maintainer by the admin (members may not open
pools), and creates a DiLoCo session with a reward pool; the server's
engine (working for the owner's wallet) and two volunteers (`cotrain join --wallet`, each with its own
wallet) train it together through the server's DHT; every peer's wallet binding is proven through
POST /rewards/bindings with two signatures, the peer's key's and the wallet's (the volunteers through
`cotrain join --wallet-key-file`, the owner through `cotrain rewards bind`); the owner's old
signed-in binding and a volunteer's binding of the owner's peer are refused. When it completes the pool
is split pro rata to the recorded contributions, the payouts are due, `cotrain ledger verify` passes, and
fails once one contribution row is edited by hand."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hivemind.utils.crypto import RSAPrivateKey

from cotrain.chain.bindings import sign_binding
from cotrain.p2p.identity import load_identity
from cotrain.p2p.peer_keys import peer_id_of
from tests.chain.wallets import Wallet
from tests.conftest import engine_env
from tests.server.conftest import reference_session, wait_until

pytestmark = pytest.mark.slow

POOL = 1_000_000_007  # octas; odd, so the rounding remainder is exercised
FAST_DILOCO = {  # every peer's DiLoCo settings (config env overrides): loopback, records every second,
    # and rounds that wait for a second peer, as in tests/distributed
    "COTRAIN_DISTRIBUTED_DILOCO_HOST_MADDRS": '["/ip4/127.0.0.1/tcp/0"]',
    "COTRAIN_DISTRIBUTED_DILOCO_MIN_PEERS": "2",
    "COTRAIN_DISTRIBUTED_DILOCO_MATCHMAKING_TIME": "2.0",
    "COTRAIN_DISTRIBUTED_DILOCO_AVERAGING_TIMEOUT": "30.0",
    "COTRAIN_DISTRIBUTED_DILOCO_PROGRESS_INTERVAL": "1.0",
    # the validator audits nobody: every round is verified on its commitment and receipts, so the split is exact
    # (a one-pass shard of 8 samples is too small for the own-data check to tell; tests/verification audits)
    "COTRAIN_DISTRIBUTED_DILOCO_AUDIT_FRACTION": "0",
    "OMP_NUM_THREADS": "1",
}


def sign_in(api, wallet: Wallet) -> str:
    challenge = api.post("/auth/nonce", json={"address": wallet.address}).json()
    signed = wallet.sign_message(message=challenge["message"], nonce=challenge["nonce"],
                                 application=challenge["application"], chain_id=challenge["chainId"])
    answer = api.post("/auth/verify", json={"address": wallet.address, "publicKey": wallet.public_key, **signed})
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def own_peer_of(public, sid: str, owner: Wallet) -> str | None:
    """The peer whose progress records name the owner's wallet: the server's own engine."""
    peers = public.get(f"/sessions/{sid}/participants").json()["peers"]
    return next((p["peer_id"] for p in peers if p.get("wallet") == owner.address), None)


def key_file(path: Path, wallet: Wallet) -> Path:
    path.write_text(str(wallet.account.private_key))
    path.chmod(0o600)
    return path


def rewards_bind(sid: str, server_url: str, peer_key_file: Path, wallet_key_file: Path) -> str:
    """`cotrain rewards bind`: what it printed (the peer id and the wallet)."""
    bind = subprocess.run([str(Path(sys.executable).with_name("cotrain")), "rewards", "bind", "--session", sid,
                           "--peer-key-file", str(peer_key_file), "--wallet-key-file", str(wallet_key_file),
                           "--server", server_url], capture_output=True, text=True, timeout=60)
    assert bind.returncode == 0, bind.stdout + bind.stderr
    return bind.stdout


class Volunteer:
    """Runs the join command the server gives (`cotrain join --server ...`) with `--wallet` (or, `bind_on_join`,
    `--wallet-key-file`), in a folder and COTRAIN_HOME of its own (the datasets folder is shared)."""

    def __init__(self, name: str, root: Path, datasets: Path, command: str, wallet: Wallet, bind_on_join: bool,
                 *sets: str, env: dict[str, str] | None = None):
        self.wallet = wallet
        self.home = home = root / name
        home.mkdir()
        (home / "datasets").symlink_to(datasets, target_is_directory=True)
        self.log_path = root / f"{name}.log"
        self.key_file = key_file(root / f"{name}-wallet.key", wallet)
        command += f" --wallet-key-file {self.key_file}" if bind_on_join else f" --wallet {wallet.address}"
        command += "".join(f" --set {item}" for item in sets)
        env = engine_env(home, TOKENIZERS_PARALLELISM="false", **{**FAST_DILOCO, **(env or {})})
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # `cotrain` of this venv
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(["bash", "-c", command], cwd=home, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def peer_id(self) -> str | None:
        """From the line the peer prints once its DHT node is up."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("diloco peer "):
                return line.split()[2]
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        return None

    def stop(self) -> None:
        import os
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.mark.parametrize("runner", ["server", "worker"])
def test_three_wallets_share_the_pool_of_a_diloco_session(servers, cotrain_home, shared_datasets, tmp_path, runner):
    """runner "worker": a separate `cotrain worker` runs the session; the server keeps the peers' records
    from its own loop and settles when it sees the session completed."""
    server = servers(COTRAIN_START_DHT="1", COTRAIN_EMBEDDED_WORKER="1" if runner == "server" else "0",
                     COTRAIN_REWARD_POOL_MAX=str(POOL), COTRAIN_CHALLENGE_WINDOW="2", **FAST_DILOCO)
    public = server.client(token=None)
    if runner == "worker":  # its engines join the server's DHT as an operator would configure it
        dht = public.get("/hivemind/status").json()["data"]["visible_addresses"]
        servers("worker", COTRAIN_DISTRIBUTED_DILOCO_INITIAL_PEERS=json.dumps(dht), **FAST_DILOCO)
    owner = Wallet.create()
    api = server.client(token=sign_in(public, owner))  # the signed-in wallet is a (non-admin) API principal
    # a member may not open a reward pool: the admin makes the owner a maintainer (pools up to COTRAIN_REWARD_POOL_MAX)
    promoted = server.client().put(f"/users/{owner.address}/role", json={"role": "maintainer"})
    assert promoted.status_code == 200, promoted.text

    body = reference_session(autoStart=False, rewardPool={"amount": POOL})
    body["distributedConfig"].update(strategy="diloco", innerSteps=4)
    body["trainingConfig"].update(maxSteps=16, batchSize=4, logInterval=4, evalInterval=16)
    body["checkpointConfig"] = {"interval": 16}
    created = api.post("/sessions", json=body)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    config = tmp_path / f"{sid}.toml"
    config.write_text(public.get(f"/sessions/{sid}/config").text)
    # tokenize once before three peers would all do it at once
    from cotrain.config import load_config
    from cotrain.core.data import prepare_dataset
    from cotrain.paths import Layout

    prepare_dataset(load_config(config).data, Layout(cotrain_home).ensure())

    join = public.get(f"/sessions/{sid}/join").json()
    assert join["initialPeers"] and join["command"].startswith(f"cotrain join --server {server.url} --session {sid}")
    assert api.get(f"/sessions/{sid}/join").json()["command"].endswith(f"--wallet {owner.address}")
    assert api.post(f"/sessions/{sid}/start").status_code == 200  # the owner wallet may start its session
    # the owner binds the server's peer as soon as its engine has made its identity file (on the server's machine),
    # with the owner's key: before the volunteers start, so a short session cannot settle first
    server_identity = cotrain_home / "models" / "checkpoints" / sid / "p2p-identity.key"
    wait_until(server_identity.is_file, 60, "the server's engine to make its peer identity")
    own = peer_id_of(load_identity(server_identity).get_public_key())
    assert f"peer {own} of session {sid} is bound to wallet {owner.address}" in \
        rewards_bind(sid, server.url, server_identity, key_file(tmp_path / "owner-wallet.key", owner))
    # the second volunteer's machine takes half the batch: half the tokens, half the reward of the others
    volunteers = [Volunteer(f"volunteer{i}", tmp_path, shared_datasets, join["command"], Wallet.create(), True,
                            *sets) for i, sets in enumerate([(), ("train.batch_size=2",)])]
    try:
        # each volunteer's `cotrain join --wallet-key-file` bound its peer with both keys before training (binding a
        # running peer with `cotrain rewards bind` would race this short session's settlement; test_join_binding.py)
        peer_ids = [wait_until(v.peer_id, 60, "the volunteer's peer id") for v in volunteers]
        for v, peer_id in zip(volunteers, peer_ids, strict=True):
            assert f"peer {peer_id} of session {sid} is bound to wallet {v.wallet.address}" in v.log_path.read_text()

        assert wait_until(lambda: own_peer_of(public, sid, owner), 60, "the server's peer's record") == own
        # a volunteer cannot bind the owner's peer to its own wallet (it does not hold that peer's key)
        forged = replace(sign_binding(RSAPrivateKey(), volunteers[0].wallet.account.private_key, sid), peer_id=own)
        assert public.post("/rewards/bindings", json=forged.body()).status_code == 401
        # nor can the owner bind a volunteer's peer by being signed in: the old owner-only binding is refused
        old_way = api.post("/rewards/bindings",
                           json={"sessionId": sid, "peerId": peer_ids[1], "address": owner.address})
        assert old_way.status_code == 401 and "no signature by the peer's key" in old_way.text, old_way.text

        def finished():
            session = public.get(f"/sessions/{sid}").json()
            return session if session["status"] in ("completed", "failed") else None

        session = wait_until(finished, 180, "the session to finish", interval=0.5)
        assert session["status"] == "completed", (session["error"], public.get(f"/sessions/{sid}/logs").json())
        peers_over_time = [p["participants"] for p in public.get(f"/sessions/{sid}/metrics").json()["points"]]
        assert max(p for p in peers_over_time if p is not None) == 3, peers_over_time
        rewards = wait_until(lambda: (r := public.get(f"/rewards/sessions/{sid}").json())["rewards"]
                             and all(x["payoutStatus"] == "due" for x in r["rewards"]) and r, 30,
                             "the rewards and their payouts due, after the 2 s challenge window")
    finally:
        for v in volunteers:
            v.stop()

    contributors = rewards["contributors"]
    wallets = {owner.address, *(v.wallet.address for v in volunteers)}
    assert {c["address"] for c in contributors} == wallets, contributors
    assert all(c["status"] == "verified" and c["outerRounds"] >= 2 for c in contributors), \
        [(c["status"], c["outerRounds"], c.get("reason")) for c in contributors]
    tokens = {c["address"]: c["tokens"] for c in contributors}
    assert tokens[volunteers[1].wallet.address] * 2 == tokens[volunteers[0].wallet.address] == tokens[owner.address]
    split = {r["address"]: r["amount"] for r in rewards["rewards"]}
    assert sum(split.values()) == POOL
    total = sum(c["tokens"] for c in contributors)
    for c in contributors:  # pro rata, within the one octa of the rounding remainder
        assert abs(split[c["address"]] - POOL * c["tokens"] / total) <= 1, (split, contributors)

    cli = [str(Path(sys.executable).with_name("cotrain")), "ledger", "verify"]
    env = engine_env(cotrain_home)
    ok = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with sqlite3.connect(cotrain_home / "cotrain.db") as db:  # by hand, as someone with the DB file would
        db.execute("UPDATE chain_contributions SET tokens = tokens + 1000 WHERE address = ?", (owner.address,))
    bad = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "chain_contributions" in bad.stderr, bad.stdout + bad.stderr
    print(f"\n3-peer DiLoCo rewards: tokens {sorted(tokens.values())}, rounds "
          f"{sorted(c['outerRounds'] for c in contributors)}, split {sorted(split.values())} (pool {POOL})")

