"""`cotrain join --wallet-key-file` and `cotrain rewards bind` against a real `cotrain up`: the volunteer's
machine signs both halves of the binding (its peer's identity key and its wallet's key; neither leaves it), the
server records the binding, and the peer the run becomes is the peer that was bound. Every way it can go
wrong on the volunteer's side is one `error:` sentence."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from cotrain.chain.orm import PeerBinding
from cotrain.db import default_database_url, open_database
from cotrain.p2p.identity import load_identity
from cotrain.p2p.peer_keys import peer_id_of
from tests.chain.wallets import Wallet
from tests.conftest import engine_env
from tests.server.conftest import reference_session, wait_until
from tests.server.test_join_server import COTRAIN, FAST_DILOCO, join, refused

pytestmark = pytest.mark.slow


def wallet_key_file(path: Path, wallet: Wallet, mode: int = 0o600) -> Path:
    path.write_text(str(wallet.account.private_key))
    path.chmod(mode)
    return path


def bindings(home: Path, session_id: str) -> dict[str, tuple[str, str]]:
    """The server's bindings of a session, read from its database: peer id -> (wallet, proof)."""
    _, factory = open_database(default_database_url(home))
    with factory() as db:
        rows = db.scalars(select(PeerBinding).where(PeerBinding.session_id == session_id)).all()
        return {row.peer_id: (row.address, row.proof) for row in rows}


def diloco_session(server) -> str:
    body = reference_session(autoStart=False)
    body["distributedConfig"].update(strategy="diloco", innerSteps=10)
    created = server.client().post("/sessions", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_join_binds_the_peer_it_becomes(servers, cotrain_home, shared_datasets, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the server's own SQLite file under its home
    server = servers(COTRAIN_START_DHT="1", **FAST_DILOCO)
    sid = diloco_session(server)
    wallet = Wallet.create()
    home = tmp_path / "volunteer"
    home.mkdir()
    (home / "datasets").symlink_to(shared_datasets, target_is_directory=True)
    log_path = tmp_path / "volunteer.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([COTRAIN, "join", "--server", server.url, "--session", sid, "--wallet-key-file",
                                 str(wallet_key_file(tmp_path / "wallet.key", wallet))],
                                env=engine_env(home, TOKENIZERS_PARALLELISM="false", **FAST_DILOCO),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def line(prefix: str) -> str | None:
            text = log_path.read_text(errors="replace")
            assert proc.poll() is None, text[-3000:]
            return next((x for x in text.splitlines() if x.startswith(prefix)), None)

        bound_line = wait_until(lambda: line("peer "), 60, "cotrain join to bind its peer")
        peer_id = bound_line.split()[1]
        assert bound_line == f"peer {peer_id} of session {sid} is bound to wallet {wallet.address}"
        assert bindings(cotrain_home, sid) == {peer_id: (wallet.address, "peer_and_wallet")}
        identity = home / "models" / "checkpoints" / sid / "p2p-identity.key"
        assert peer_id_of(load_identity(identity).get_public_key()) == peer_id  # the key that signed is the peer's
        running = wait_until(lambda: line("diloco peer "), 120, "the run's DHT node")
        assert running.split()[2] == peer_id  # the run is the peer that was bound
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_binding_mistakes_are_sentences(servers, cotrain_home, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    server = servers()  # no DHT node needed for `cotrain rewards bind`; `join` stops before training
    sid = diloco_session(server)
    wallet = Wallet.create()
    key = wallet_key_file(tmp_path / "wallet.key", wallet)
    refused(join(cotrain_home, "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/x", "--session", sid,
                 "--wallet-key-file", str(key)), "--wallet-key-file", "--server")
    open_key = wallet_key_file(tmp_path / "open.key", wallet, 0o644)
    refused(join(cotrain_home, "--server", server.url, "--session", sid, "--wallet-key-file", str(open_key)),
            "readable by other users", "chmod 600")
    refused(join(cotrain_home, "--server", server.url, "--session", sid, "--wallet-key-file", str(tmp_path / "no")),
            "Could not read the wallet key file")
    refused(join(cotrain_home, "--server", server.url, "--session", sid, "--wallet-key-file", str(key),
                 "--wallet", Wallet.create().address), "is not the wallet of --wallet-key-file")

    def bind(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COTRAIN, "rewards", "bind", "--session", sid, "--server", server.url, *args],
                              capture_output=True, text=True, timeout=60, env=engine_env(cotrain_home))

    refused(bind("--peer-key-file", str(tmp_path / "none.key"), "--wallet-key-file", str(key)),
            "Could not read the peer's identity file")
    from cotrain.p2p.identity import load_or_create_identity

    identity = tmp_path / "peer" / "p2p-identity.key"
    peer_id = peer_id_of(load_or_create_identity(identity).get_public_key())
    done = bind("--peer-key-file", str(identity), "--wallet-key-file", str(key))
    assert done.returncode == 0 and f"peer {peer_id} of session {sid} is bound to wallet {wallet.address}" in \
        done.stdout, done.stdout + done.stderr
    other = wallet_key_file(tmp_path / "other.key", Wallet.create())
    refused(bind("--peer-key-file", str(identity), "--wallet-key-file", str(other)), "already bound")
    assert bindings(cotrain_home, sid) == {peer_id: (wallet.address, "peer_and_wallet")}
