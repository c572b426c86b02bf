"""Full disks (issue 18), on real small filesystems (tests/small_disk.py: a tmpfs mounted for the test).

- The checkpoints' disk fills mid-run: the checkpoint that does not fit leaves the last good one whole,
  the run fails with one sentence naming the disk and its free bytes (status, error, log: no
  traceback), and once space returns the executor's retry resumes from that checkpoint and completes.
- The disk under COTRAIN_HOME (database, logs) fills while the API serves: writes get 507 with a
  sentence, reads go on, the process lives, and it works again when space returns, without a restart.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cotrain.core import checkpoint as ckpt
from tests.server.conftest import ADMIN_TOKEN, ServerProcess, WSCollector, reference_session, wait_until
from tests.small_disk import fill, small_disk

pytestmark = pytest.mark.slow

# A debug-llama checkpoint of the tiny session takes about 2 MiB: 3 MiB holds the first, not a second.
ONE_CHECKPOINT_MIB = 3
RETRY_BACKOFF_S = "4"  # time to see the failure and give the space back before the retry starts


def status_messages(api, sid):
    return [m["data"] for m in api.get(f"/sessions/{sid}/events", params={"limit": 10000}).json()
            if m["event"] == "training.status"]


def stored_seqs(api, sid):
    return [m["seq"] for m in api.get(f"/sessions/{sid}/events", params={"limit": 10000}).json()]


def received_seqs(ws, sid):
    return [m["data"]["seq"] for m in ws.messages
            if m["event"].startswith("training.") and m["data"].get("sessionId") == sid]


def grow(disk: Path, size_mib: int) -> None:
    """Space returns: the operator grows the volume (a tmpfs is resized in place)."""
    subprocess.run(["mount", "-o", f"remount,size={size_mib}m", str(disk)], check=True)


def assert_loadable(path: Path) -> None:
    assert ckpt.load_checkpoint_dir(path).step == int(path.name.split("-")[1])
    assert load_file(str(path / "model.safetensors"))
    assert ckpt.load_optimizer_state(path)["state"]


def test_a_full_checkpoint_disk_fails_the_run_in_one_sentence_and_the_retry_resumes(servers, cotrain_home):
    with small_disk(cotrain_home / "models" / "checkpoints", ONE_CHECKPOINT_MIB) as disk:
        server = servers(COTRAIN_RETRY_BACKOFF=RETRY_BACKOFF_S)
        api = server.client()
        ws = WSCollector(f"{server.ws_url}?token={ADMIN_TOKEN}")
        ws.send({"action": "subscribe", "sessionId": "*"})
        wait_until(lambda: ws.of("subscribed"), 10, "the acknowledgement")
        sid = api.post("/sessions", json=reference_session(maxRetries=1)).json()["id"]

        failed = wait_until(lambda: next((s for s in status_messages(api, sid) if s["status"] == "queued"
                                          and s.get("error")), None), 180, "the checkpoint of step 20 to fail")
        error = failed["error"]
        assert "The disk is full: the checkpoint of step 20" in error and str(disk / sid) in error, error
        assert " bytes (" in error and " free; " in error and "step-00000010" in error and "\n" not in error
        assert "Traceback" not in error and "Retrying" in error
        assert [c.step for c in ckpt.list_checkpoints(disk / sid)] == [10]
        assert sorted(p.name for p in (disk / sid).iterdir()) == ["step-00000010"]  # no partial folder
        assert_loadable(disk / sid / "step-00000010")
        stderr = (cotrain_home / "logs" / "training" / sid / "stderr.log").read_text()
        assert "error: The disk is full: the checkpoint of step 20" in stderr and "Traceback" not in stderr

        grow(disk, 32)
        freed = time.monotonic()
        resumed = wait_until(lambda: next((s for s in status_messages(api, sid) if s.get("resumedFrom")), None),
                             60, "the retry to start from the checkpoint")
        print(f"\nfull disk: space returned -> run resumed from {resumed['resumedFrom']} in "
              f"{time.monotonic() - freed:.1f} s (retry backoff {RETRY_BACKOFF_S} s)", flush=True)
        assert resumed["resumedFrom"].endswith("step-00000010") and resumed["step"] == 10

        session = wait_until(lambda: (s := api.get(f"/sessions/{sid}").json())["status"] in ("completed", "failed")
                             and s, 180, "the retried session to finish")
        print(f"full disk: space returned -> session completed in {time.monotonic() - freed:.1f} s", flush=True)
        assert session["status"] == "completed", session["error"]
        assert session["attempts"] == 2
        assert [m["name"] for m in api.get("/models", params={"session": sid}).json()] == ["v1"]
        seqs = stored_seqs(api, sid)
        assert seqs == list(range(1, len(seqs) + 1))
        wait_until(lambda: received_seqs(ws, sid)[-1:] == seqs[-1:], 10, "the subscriber to catch up")
        assert received_seqs(ws, sid) == seqs  # every message once, in order
        ws.close()
        server.stop()


def draft(api):
    return api.post("/sessions", json=reference_session(autoStart=False))


def test_a_full_disk_under_cotrain_home_gets_clear_errors_and_the_server_recovers(server_env, cotrain_home, tmp_path):
    datasets = (cotrain_home / "datasets").readlink()
    with small_disk(cotrain_home, 32) as home:  # the database (SQLite), logs/system, the run logs
        (home / "datasets").symlink_to(datasets, target_is_directory=True)
        server = ServerProcess(home, {**server_env, "COTRAIN_EMBEDDED_WORKER": "0"})
        server.log_path = tmp_path / "server.log"  # its stdout, as journald or docker would keep it: elsewhere
        try:
            server.start()
            full_disk_round_trip(server, home)
        finally:
            server.stop()


def full_disk_round_trip(server: ServerProcess, home: Path) -> None:
    api = server.client()
    assert draft(api).status_code == 201
    ballast = fill(home)

    refused = draft(api)
    assert refused.status_code == 507, refused.text + server.log_path.read_text()[-2500:]
    detail = refused.json()["detail"]
    assert detail.startswith("The disk is full") and str(home) in detail and "Traceback" not in detail, detail
    token = api.post("/auth/tokens", json={"name": "on a full disk"})  # a write to the database alone
    assert token.status_code == 507, token.text
    assert token.json()["detail"].startswith(f"The disk is full: the database {home / 'cotrain.db'} cannot grow")
    listed = api.get("/sessions")  # what is stored can still be read
    assert listed.status_code == 200 and listed.json()["total"] == 1
    assert server.proc is not None and server.proc.poll() is None  # the process lives on

    ballast.unlink()
    freed = time.monotonic()
    created = wait_until(lambda: (r := draft(api)).status_code == 201 and r, 30, "writes to work again")
    print(f"\nfull disk under COTRAIN_HOME: space returned -> writes accepted in {time.monotonic() - freed:.2f} s",
          flush=True)
    assert created.json()["id"] and api.get("/sessions").json()["total"] == 2
    assert api.post("/auth/tokens", json={"name": "after the disk was freed"}).status_code == 201
