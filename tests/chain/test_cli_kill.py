"""The `cotrain` commands as real processes: a payout run killed with SIGKILL between submitting the
transaction and recording it pays everyone exactly once on the next run; `cotrain ledger verify` passes and
fails after a hand edit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aptos_sdk import ed25519
from aptos_sdk.account import Account
from sqlalchemy import select, text

from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import PayoutBatchRow, PayoutRow
from cotrain.chain.settlement import set_reward_pool, settle_session
from cotrain.db import open_database

from .fake_aptos import FakeAptosServer
from .test_ledger import Rec

COTRAIN = [sys.executable, "-c", "from cotrain.cli import main; main()"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    treasury_file = tmp_path / "treasury.key"
    treasury_file.write_text(ed25519.PrivateKey.random().hex())
    treasury_file.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "COTRAIN_HOME": str(home), "DATABASE_URL": f"sqlite:///{tmp_path / 'cotrain.db'}",
            "COTRAIN_LEDGER_KEY": ed25519.PrivateKey.random().hex(), "COTRAIN_TREASURY_KEY_FILE": str(treasury_file),
            "COTRAIN_PAYOUT_BACKEND": "aptos", "APTOS_NETWORK": "local", "PYTHONUNBUFFERED": "1"}


def prepared(env: dict[str, str], wallets: list[str]):
    _, factory = open_database(env["DATABASE_URL"])
    ledger = Ledger(ed25519.PrivateKey.from_str(env["COTRAIN_LEDGER_KEY"], strict=False))
    with factory.begin() as db:
        set_reward_pool(db, ledger, "dilo", 900_000, "APT")
        settle_session(db, ledger, "dilo", [Rec(f"p{i}", w, 100 * (i + 1), session_id="dilo")
                                            for i, w in enumerate(wallets)], require_binding=False)
    return factory


def cli(env, *args, timeout=60):
    return subprocess.run(COTRAIN + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def treasury_address(env) -> str:
    key = ed25519.PrivateKey.from_str(Path(env["COTRAIN_TREASURY_KEY_FILE"]).read_text(), strict=False)
    return str(Account.load_key(key.hex()).address())


@pytest.mark.parametrize("lost", [False, True], ids=["accepted", "lost-in-transit"])
def test_kill_between_submit_and_record_pays_exactly_once(env, lost):
    wallets = [str(Account.generate().address()) for _ in range(3)]
    factory = prepared(env, wallets)
    with FakeAptosServer() as node:
        node.node.fund(treasury_address(env), 10**8)
        env = {**env, "APTOS_NODE_URL": node.url}
        node.node.hold_submit, node.node.drop_submit = True, lost
        proc = subprocess.Popen(COTRAIN + ["rewards", "pay"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert node.node.submit_seen.wait(60), proc.stderr.read() if proc.poll() is not None else "no submit"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        node.node.hold_submit, node.node.drop_submit = False, False
        node.node.release.set()

        with factory() as db:  # the crash left the batch recorded as pending, not as paid
            assert [b.status for b in db.scalars(select(PayoutBatchRow))] == ["pending"]
            assert {p.status for p in db.scalars(select(PayoutRow))} == {"pending"}

        again = cli(env, "rewards", "pay")
        assert again.returncode == 0, again.stderr
        assert "committed 0x" in again.stdout
        assert [node.node.balance(w) for w in wallets] == [150_000, 300_000, 450_000]
        assert len(node.node.committed) == 1
        assert cli(env, "rewards", "pay").returncode == 0 and len(node.node.committed) == 1

        listing = cli(env, "rewards", "--session", "dilo")
        assert listing.returncode == 0 and listing.stdout.count(" paid") == 3

        ok = cli(env, "ledger", "verify")
        assert ok.returncode == 0 and "ledger OK" in ok.stdout, ok.stderr
        with factory.begin() as db:
            db.execute(text(f"UPDATE chain_rewards SET amount = amount + 1 WHERE address = '{wallets[0]}'"))
        bad = cli(env, "ledger", "verify")
        assert bad.returncode == 1 and "TAMPERED" in bad.stderr and "chain_rewards" in bad.stderr


def test_pay_without_treasury_key_says_what_to_do(env):
    env = {**env, "APTOS_NODE_URL": "http://127.0.0.1:9/v1"}
    env.pop("COTRAIN_TREASURY_KEY_FILE")
    out = cli(env, "rewards", "pay")
    assert out.returncode == 2 and "COTRAIN_TREASURY_KEY_FILE" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_node_is_one_clear_line(env):
    env = {**env, "APTOS_NODE_URL": "http://127.0.0.1:9/v1"}
    prepared(env, [str(Account.generate().address())])
    out = cli(env, "rewards", "pay")
    assert out.returncode == 2 and "Could not reach the Aptos node" in out.stderr and "Traceback" not in out.stderr
