"""The `cotrain` CLI for the platform, as real subprocesses from a fresh shell (no COTRAIN_* settings,
its own XDG_CONFIG_HOME), against the real `cotrain up` of tests/client/conftest.py.

`cli_end_to_end` is the issue's end-to-end path (login, sessions create of the tiny-cpu template,
sessions watch with the WebSocket cut mid-run, models download, the model loads with transformers);
it returns what it made, so a larger test can go on from there (the experiment trackers' curves)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.chain.wallets import Wallet
from tests.client.conftest import ADMIN_TOKEN, TEMPLATE, TINY_SET, DroppingProxy
from tests.security.conftest import api_token
from tests.trackers import mlflow_history, mlflow_run, running_mlflow_server, tensorboard_scalars

pytestmark = pytest.mark.slow

COTRAIN = str(Path(sys.executable).with_name("cotrain"))


def fresh_shell(folder: Path, **extra: str) -> dict[str, str]:
    """A shell that never ran `cotrain login`: its own config folder, no COTRAIN_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COTRAIN_") and k != "XDG_CONFIG_HOME"}
    env.update(XDG_CONFIG_HOME=str(folder / "config"), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", **extra)
    (folder / "config").mkdir(parents=True, exist_ok=True)
    return env


def cli(*args: Any, env: dict[str, str], cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COTRAIN, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str, code: int = 2) -> str:
    """A refusal: the exit code, one line on stderr naming `words`, never a traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@dataclass
class EndToEnd:
    session_id: str
    messages: list[dict[str, Any]]  # what `cotrain sessions watch --json` printed
    zip_path: Path
    model_dir: Path
    env: dict[str, str]  # the shell, logged in (run more `cli(...)` in it)
    drops: int


def cli_end_to_end(proxy: DroppingProxy, workdir: Path, token: str = ADMIN_TOKEN,
                   sets: list[str] | None = None, cut_at_step: int = 10) -> EndToEnd:
    """From a fresh shell: `cotrain login`, `cotrain sessions create configs/templates/tiny-cpu.toml`
    (made tiny with --set; add yours with `sets`), `cotrain sessions watch --json` while the proxy cuts the
    WebSocket at `cut_at_step`, `cotrain models download --session`, and the zip's model loads with
    transformers. `proxy` stands in front of the server (DroppingProxy(server.port).start()). Asserts each
    step; the caller may check more from what it returns (tracker curves: the session id)."""
    import torch
    from transformers import AutoModelForCausalLM

    env = fresh_shell(workdir)
    login = cli("login", "--server", proxy.url, "--token", token, env=env)
    assert login.returncode == 0, login.stderr
    overrides = (f"--set={s}" for s in [*TINY_SET, *(sets or [])])
    created = cli("sessions", "create", TEMPLATE, *overrides, "--json", env=env)
    assert created.returncode == 0, created.stderr
    session_id = json.loads(created.stdout)["id"]

    watch = subprocess.Popen([COTRAIN, "sessions", "watch", session_id, "--json"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    messages, drops = [], 0
    assert watch.stdout is not None
    for line in watch.stdout:
        message = json.loads(line)
        messages.append(message)
        if not drops and message["event"] == "training.progress" and message["data"]["step"] >= cut_at_step:
            drops = proxy.drop_websockets()
    code = watch.wait(timeout=60)
    assert code == 0, (code, watch.stderr.read() if watch.stderr else "")
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # the cut lost nothing and repeated nothing
    assert drops >= 1 and messages[-1]["data"]["status"] == "completed"
    steps = [m["data"]["step"] for m in messages if m["event"] == "training.progress"]
    assert steps == sorted(set(steps)) and steps[-1] == 40

    download = cli("models", "download", "--session", session_id, env=env, cwd=workdir)
    assert download.returncode == 0, download.stderr
    zips = list(workdir.glob(f"{session_id}-v*.zip"))
    assert len(zips) == 1, download.stdout
    with zipfile.ZipFile(zips[0]) as archive:
        archive.extractall(workdir)
    model_dir = workdir / zips[0].stem
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    return EndToEnd(session_id, messages, zips[0], model_dir, env, drops)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def test_cli_end_to_end(platform, proxy: DroppingProxy, tmp_path: Path, mlflow_server: str):
    """Issue 17's whole path from a fresh shell, and the same session's curves in TensorBoard and
    MLflow, equal to what `sessions watch` showed."""
    trackers = ["tracking.backends=tensorboard,mlflow", f"tracking.mlflow_uri={mlflow_server}",
                "tracking.mlflow_experiment=end-to-end"]
    done = cli_end_to_end(proxy, tmp_path, sets=trackers)
    watched = {m["data"]["step"]: m["data"]["loss"] for m in done.messages
               if m["event"] == "training.progress" and m["data"].get("loss") is not None}
    board = tensorboard_scalars(platform.home / "logs" / "tensorboard" / done.session_id, "loss")
    run = mlflow_run(mlflow_server, done.session_id, "end-to-end")
    assert run.info.status == "FINISHED"
    logged = mlflow_history(mlflow_server, run.info.run_id, "loss")
    assert len(watched) >= 10 and set(watched) <= set(board) and set(watched) <= set(logged)
    for step, loss in watched.items():
        assert board[step] == pytest.approx(loss, rel=1e-5) and logged[step] == pytest.approx(loss, rel=1e-5)
    shown = json.loads(cli("sessions", "show", done.session_id, "--json", env=done.env).stdout)
    assert shown["status"] == "completed" and shown["totalSteps"] == 40
    listed = json.loads(cli("sessions", "list", "--json", env=done.env).stdout)
    assert done.session_id in [s["id"] for s in listed["items"]]
    models = json.loads(cli("models", "list", "--session", done.session_id, "--json", env=done.env).stdout)
    assert [m["name"] for m in models] == ["v1"]
    logs = cli("sessions", "logs", done.session_id, "-f", "-n", "20", env=done.env)
    assert logs.returncode == 0 and logs.stdout.strip()
    config = cli("sessions", "config", done.session_id, env=done.env)
    assert f'id = "{done.session_id}"' in config.stdout and "max_steps = 40" in config.stdout
    table = cli("sessions", "list", env=done.env)
    assert table.returncode == 0 and done.session_id in table.stdout


class Capture(BaseHTTPRequestHandler):
    """A stand-in server that records the Authorization header it is sent, and refuses."""

    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        Capture.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"detail": "Send a valid token."}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_login_stores_the_server_and_token_and_what_overrides_them(platform, tmp_path: Path):
    env = fresh_shell(tmp_path)
    one_line_error(cli("sessions", "list", env=env), "No server to talk to", "cotrain login")
    one_line_error(cli("login", "--server", platform.url, "--token", "ct_wrong", env=env), "(401)")
    stored = tmp_path / "config" / "cotrain" / "login.json"
    assert not stored.exists()

    logged = cli("login", "--server", platform.url, "--token", ADMIN_TOKEN, env=env)
    assert logged.returncode == 0 and "as admin" in logged.stdout, logged.stderr
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert json.loads(stored.read_text()) == {"server": platform.url, "token": ADMIN_TOKEN}
    assert cli("sessions", "list", "--json", env=env).returncode == 0

    # --token / COTRAIN_TOKEN win over the stored token: a member may not raise a priority
    member = api_token(platform, "member", "cli-member")
    for args, extra in ((["--token", member], {}), ([], {"COTRAIN_TOKEN": member})):
        refused = cli("sessions", "create", TEMPLATE, "--draft", "--priority", "5", *args, env={**env, **extra})
        one_line_error(refused, "(403)", "priority")

    # --server / COTRAIN_SERVER win over the stored server, and the stored token never goes to another server
    capture = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    other = f"http://127.0.0.1:{capture.server_address[1]}"
    try:
        one_line_error(cli("sessions", "list", "--server", other, env=env), "(401)", "Send a valid token.")
        one_line_error(cli("sessions", "list", env={**env, "COTRAIN_SERVER": other}), "(401)")
        one_line_error(cli("sessions", "list", env={**env, "COTRAIN_SERVER": other, "COTRAIN_TOKEN": "ct_x"}), "(401)")
    finally:
        capture.shutdown()
    assert Capture.seen == [None, None, "Bearer ct_x"]
    one_line_error(cli("sessions", "list", "--server", "http://127.0.0.1:9", env=env), "Could not reach")

    assert cli("logout", env=env).stdout.strip() == "logged out" and not stored.exists()


def test_login_with_a_wallet_key_file(platform, tmp_path: Path):
    env = fresh_shell(tmp_path)
    wallet = Wallet.create()
    key = tmp_path / "wallet.key"
    key.write_text(str(wallet.account.private_key))
    key.chmod(0o644)
    one_line_error(cli("login", "--server", platform.url, "--wallet-key-file", key, env=env), "chmod 600")
    key.chmod(0o600)
    logged = cli("login", "--server", platform.url, "--wallet-key-file", key, "--json", env=env)
    assert logged.returncode == 0, logged.stderr
    who = json.loads(logged.stdout)
    assert who["role"] == "member" and who["name"] == f"wallet:{wallet.address}"
    stored = json.loads((tmp_path / "config" / "cotrain" / "login.json").read_text())
    assert stored["address"] == wallet.address and stored["token"]
    assert cli("sessions", "list", "--json", env=env).returncode == 0
    assert cli("logout", env=env).returncode == 0
    # the wallet token was signed out on the server too
    one_line_error(cli("sessions", "list", "--token", stored["token"], "--server", platform.url, env=env), "(401)")


def test_watch_exit_codes_and_one_line_errors(platform, tmp_path: Path):
    env = fresh_shell(tmp_path, COTRAIN_SERVER=platform.url, COTRAIN_TOKEN=ADMIN_TOKEN)
    one_line_error(cli("sessions", "show", "nosuchsession", env=env), "(404)", "No session 'nosuchsession'")
    one_line_error(cli("sessions", "create", tmp_path / "missing.toml", env=env), "No such file")
    one_line_error(cli("models", "download", env=env), "--session")
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nbatch_size = 0\n')
    one_line_error(cli("sessions", "create", bad, env=env), "(422)", "train.batch_size = 0")

    # a draft cancelled at once: watch replays it and exits 3
    draft = json.loads(cli("sessions", "create", TEMPLATE, "--draft", "--json", env=env).stdout)
    assert draft["status"] == "draft"
    assert cli("sessions", "cancel", draft["id"], env=env).stdout.strip() == f"session {draft['id']}: cancelled"
    assert cli("sessions", "watch", draft["id"], env=env).returncode == 3

    # a run that fails (its data folder, inside the data roots, is empty): watch exits 1
    empty = Path(platform.home) / "datasets" / "raw" / f"empty-{tmp_path.name}"
    empty.mkdir(parents=True)
    failing = tmp_path / "failing.toml"
    failing.write_text(f'[model]\nsize = "debug"\n[train]\nmax_steps = 4\nbatch_size = 8\n'
                       f'[data]\ndata_path = "datasets/raw/{empty.name}"\nseq_length = 64\nvocab_size = 512\n')
    created = json.loads(cli("sessions", "create", failing, "--json", env=env).stdout)
    watched = cli("sessions", "watch", created["id"], env=env, timeout=240)
    assert watched.returncode == 1, (watched.stdout, watched.stderr)
    assert "failed" in watched.stdout and "no .txt, .jsonl or .parquet files" in watched.stdout
    assert cli("sessions", "retry", created["id"], env=env).returncode == 0
    assert cli("sessions", "watch", created["id"], "--json", env=env, timeout=240).returncode == 1
