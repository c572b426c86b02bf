"""Wallet sign-in against the real server: `cotrain up` as a child process, which includes the chain's router
and runs the chain's migrations."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, terminate

from .wallets import Wallet


@pytest.fixture
def server(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "COTRAIN_HOME": str(tmp_path), "COTRAIN_START_DHT": "0", "PYTHONUNBUFFERED": "1",
           "COTRAIN_ADMIN_TOKEN": "ct_chain_test_admin", "APTOS_NETWORK": "testnet"}
    for key in ("DATABASE_URL", "REDIS_URL", "COTRAIN_PUBLIC_ORIGIN", "APTOS_NODE_URL", "COTRAIN_LEDGER_KEY"):
        env.pop(key, None)
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("cotrain")), "up", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        yield url, tmp_path
    finally:
        terminate(proc)
        log.close()


def test_sign_in_on_cotrain_up(server):
    url, home = server
    wallet = Wallet.create()
    with httpx.Client(base_url=url + "/api/v1", timeout=30) as client:
        nonce = client.post("/auth/nonce", json={"address": wallet.address}).json()
        assert nonce["application"] == url and nonce["chainId"] == 2
        signed = wallet.sign_message(message=nonce["message"], nonce=nonce["nonce"], application=url, chain_id=2)
        body = {"address": wallet.address, "publicKey": wallet.public_key, **signed}
        ok = client.post("/auth/verify", json=body)
        assert ok.status_code == 200, ok.text
        mine = client.get("/me/contributions", headers={"Authorization": "Bearer " + ok.json()["token"]})
        assert mine.status_code == 200 and mine.json() == []
        replay = client.post("/auth/verify", json=body)
        assert replay.status_code == 401 and replay.json()["detail"]["reason"] == "replay"
    key = home / "keys" / "ledger.key"  # created on first use, readable by the owner only
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
