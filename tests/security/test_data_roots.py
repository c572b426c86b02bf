"""Data roots (issue 11): a member's `dataPath` must resolve inside COTRAIN_DATA_ROOTS, the engine a
worker starts holds its config to the worker's own roots, and `cotrain join --server` takes no
paths from the server.

One real `cotrain up` (SQLite, embedded executor) serves the whole module; the exploit of the issue
(a wallet member's session with `"dataPath": "/etc"`) is replayed against it. Sessions that must
not train are drafts; the runs that do start fail at their first step, before any data is read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from cotrain.config import load_config
from cotrain.core.path_guard import ALLOW_ANY_ENV, ENFORCE_ENV, DataRootError, check_config_paths
from cotrain.data_roots import data_roots, parse_roots, resolve
from cotrain.p2p.server_join import volunteer_config
from tests.conftest import PYTHON, engine_env, tiny_config, wait_until
from tests.security.conftest import ADMIN_TOKEN, ServerProcess, api_token, wallet_sign_in
from tests.server.conftest import engine_pids

COTRAIN = str(Path(sys.executable).with_name("cotrain"))
DRAFT = {"autoStart": False, "public": False}


@dataclass
class Platform:
    server: ServerProcess
    home: Path
    root: Path  # the server's one data root, resolved (COTRAIN_HOME/datasets/raw by default)
    member: str  # a wallet member's token (a stranger with a fresh Aptos key)
    maintainer: str

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        return self.server.client(token)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "cotrain.db", timeout=30)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("data-roots") / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "COTRAIN_DATA_ROOTS", ENFORCE_ENV, ALLOW_ANY_ENV)}
    env.update(
        COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0", COTRAIN_RETRY_BACKOFF="0.5",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
        COTRAIN_RATE_SESSION_CREATE="1000/hour", COTRAIN_RATE_LIMIT_NAMESPACE=f"test-roots-{os.getpid()}",
    )
    server = ServerProcess(home, env).start()
    try:
        root = resolve(home / "datasets" / "raw")
        assert root.is_dir()
        member, _ = wallet_sign_in(server)
        yield Platform(server, home, root, member, api_token(server, "maintainer", "maintainer"))
    finally:
        server.stop()
        for pid in engine_pids(home):
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass


def session(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {"name": "roots", "modelConfig": {"size": "debug"},
            "trainingConfig": {"batchSize": 8, "maxSteps": 2, "logInterval": 1},
            "dataConfig": {"seqLength": 64, "vocabSize": 512, **data}, **DRAFT}
    body.update(changes)
    return body


def refused_outside(answer: httpx.Response, platform: Platform) -> str:
    """422 on dataConfig.dataPath, one sentence naming the roots and who may go further."""
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "dataConfig", "dataPath"] and error["type"] == "data_path_outside_roots"
    msg = error["msg"]
    assert str(platform.root) in msg and "maintainers and admins" in msg and "COTRAIN_DATA_ROOTS" in msg, msg
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def approval_of(platform: Platform, sid: str) -> dict[str, Any] | None:
    with platform.db() as db:
        (value,) = db.execute("SELECT data_path_approval FROM training_sessions WHERE id = ?", (sid,)).fetchone()
    return json.loads(value) if value else None


# ---- the server ------------------------------------------------------------------------------

def test_the_etc_exploit_is_refused_for_a_wallet_member(platform: Platform):
    """The issue's exploit: a stranger's wallet session with "dataPath": "/etc" (auto-started)."""
    with platform.client(platform.member) as member:
        before = member.get("/sessions").json()["total"]
        refused_outside(member.post("/sessions", json=session({"dataPath": "/etc"}, autoStart=True)), platform)
        refused_outside(member.post("/sessions", json=session({"dataPath": "/etc/passwd"})), platform)
        assert member.get("/sessions").json()["total"] == before  # nothing was stored or queued
    assert not list((platform.home / "configs" / "generated").glob("*.toml"))


def test_escapes_from_the_root_are_refused(platform: Platform):
    root = platform.root
    (root / "corpus").mkdir(exist_ok=True)
    (root / "etc-link").unlink(missing_ok=True)
    (root / "etc-link").symlink_to("/etc", target_is_directory=True)  # a symlink inside the root, leading out
    (root / "passwd.txt").unlink(missing_ok=True)
    (root / "passwd.txt").symlink_to("/etc/passwd")
    sibling = root.parent / (root.name + "-private")  # ".../raw-private": a string prefix of the root, not inside
    sibling.mkdir(exist_ok=True)
    escapes = [
        f"{root}/../../../../../../../../etc",  # `..` climbing out
        f"{root}/corpus/../../processed",
        str(root / "etc-link"),
        str(root / "etc-link" / "passwd"),
        str(root / "passwd.txt"),
        str(sibling / "corpus.txt"),
        "../../../../../../../../etc",  # relative: taken from COTRAIN_HOME, where the executor starts runs
        "datasets/raw-private/corpus.txt",
        "~/.ssh",  # `~` is the server user's home
        "/proc/self/root/etc",
        str(root) + "/",  # fine: the root itself (checked below among the accepted)
    ]
    with platform.client(platform.member) as member:
        for path in escapes[:-1]:
            msg = refused_outside(member.post("/sessions", json=session({"dataPath": path})), platform)
            if path.endswith("passwd.txt"):
                assert "/etc/passwd" not in msg  # where the server's links lead is not shown
        assert member.post("/sessions", json=session({"dataPath": escapes[-1]})).status_code == 201


def test_paths_inside_the_root_are_accepted_and_edits_are_held_to_the_same_rule(platform: Platform):
    root = platform.root
    inside = root / "books"
    inside.mkdir(exist_ok=True)
    (root / "books-link").unlink(missing_ok=True)
    (root / "books-link").symlink_to(inside, target_is_directory=True)  # a link inside the root, staying inside
    with platform.client(platform.member) as member:
        for path in (str(inside / "a.txt"), str(root / "books-link" / "a.txt"), "datasets/raw/books",
                     f"{root}/books/../books/a.txt"):
            created = member.post("/sessions", json=session({"dataPath": path}))
            assert created.status_code == 201, (path, created.text)
            assert approval_of(platform, created.json()["id"]) is None  # nothing outside to approve
        sid = created.json()["id"]
        refused_outside(member.patch(f"/sessions/{sid}", json={"dataConfig": {"dataPath": "/etc"}}), platform)
        edited = member.patch(f"/sessions/{sid}", json={"dataConfig": {"dataPath": str(inside)}})
        assert edited.status_code == 200, edited.text
        assert edited.json()["request"]["dataConfig"]["dataPath"] == str(inside)


def test_maintainers_and_admins_may_use_any_path_and_their_approval_is_kept(platform: Platform, tmp_path: Path):
    outside = tmp_path / "corpus"
    with platform.client(platform.maintainer) as maintainer:
        created = maintainer.post("/sessions", json=session({"dataPath": str(outside)}))
        assert created.status_code == 201, created.text
        approval = approval_of(platform, created.json()["id"])
        assert approval["path"] == str(resolve(outside)) and approval["role"] == "maintainer"
    with platform.client() as admin:
        created = admin.post("/sessions", json=session({"dataPath": "/etc"}))
        assert created.status_code == 201, created.text
        assert approval_of(platform, created.json()["id"])["role"] == "admin"
    # an admin points a member's session outside the roots: the owner may still edit the rest of it,
    # and may move it back inside, but not to another path outside
    with platform.client(platform.member) as member, platform.client() as admin:
        sid = member.post("/sessions", json=session({"dataPath": str(platform.root)})).json()["id"]
        assert admin.patch(f"/sessions/{sid}", json={"dataConfig": {"dataPath": str(outside)}}).status_code == 200
        assert approval_of(platform, sid)["path"] == str(resolve(outside))
        renamed = member.patch(f"/sessions/{sid}", json={"name": "renamed", "trainingConfig": {"learningRate": 0.01}})
        assert renamed.status_code == 200, renamed.text
        assert approval_of(platform, sid)["path"] == str(resolve(outside))
        refused_outside(member.patch(f"/sessions/{sid}", json={"dataConfig": {"dataPath": str(tmp_path)}}), platform)
        back = member.patch(f"/sessions/{sid}", json={"dataConfig": {"dataPath": str(platform.root)}})
        assert back.status_code == 200 and approval_of(platform, sid) is None


def test_no_other_path_can_be_set_through_the_api(platform: Platform):
    """model.path, data.tokenizer, checkpoint.output_path and checkpoint.resume are not in the
    request schema at all: a 422 naming the field, for every role."""
    bodies = [
        {"modelConfig": {"size": "debug", "path": "/etc"}},
        {"dataConfig": {"tokenizer": "/etc"}},
        {"checkpointConfig": {"outputPath": "/etc"}},
        {"checkpointConfig": {"resume": "/etc"}},
        {"checkpointConfig": {"output_path": "/etc"}},
    ]
    for token in (platform.member, ADMIN_TOKEN):
        with platform.client(token) as api:
            for extra in bodies:
                answer = api.post("/sessions", json={"name": "paths", **DRAFT, **extra})
                assert answer.status_code == 422, (extra, answer.text)
                assert answer.json()["detail"][0]["type"] == "extra_forbidden", answer.text


# ---- the engine --------------------------------------------------------------------------------

def run_engine(config: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The engine the way the executor starts it: `python -m cotrain.core.train --config`, cwd COTRAIN_HOME."""
    full = {k: v for k, v in engine_env(home).items() if k not in ("COTRAIN_DATA_ROOTS", ENFORCE_ENV, ALLOW_ANY_ENV)}
    return subprocess.run([PYTHON, "-m", "cotrain.core.train", "--config", str(config)], capture_output=True,
                          text=True, env={**full, **env}, cwd=home, timeout=300)


def with_data_path(config: Path, data_path: str) -> Path:
    config.write_text(config.read_text().replace('dataset = "stdlib"', f"data_path = {json.dumps(data_path)}"))
    return config


def test_the_engine_refuses_a_hand_edited_config_when_a_worker_runs_it(cotrain_home: Path, tmp_path: Path):
    config = with_data_path(tiny_config(tmp_path / "etc.toml", "etc", max_steps=2), "/etc")
    text = config.read_text().replace('precision = "fp32"', 'precision = "fp32"\npath = "/etc"')
    outside = f'interval = 10\noutput_path = "{tmp_path / "out"}"\nresume = "/etc"'
    config.write_text(text.replace("interval = 10", outside))
    done = run_engine(config, cotrain_home, **{ENFORCE_ENV: "1"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    roots = str(resolve(cotrain_home / "datasets" / "raw"))
    for named in ("data.data_path = '/etc'", "model.path = '/etc'", "checkpoint.resume = '/etc'",
                  "checkpoint.output_path", roots, "COTRAIN_DATA_ROOTS", "COTRAIN_ALLOW_ANY_DATA_PATH=1"):
        assert named in line, (named, line)
    events_path = cotrain_home / "logs" / "training" / "etc" / "events.jsonl"
    events = [json.loads(x) for x in events_path.read_text().splitlines()]
    # it failed at start: no `started`, one `failed` with the same sentence, nothing written outside
    assert [e["type"] for e in events] == ["failed"] and events[0]["error"] == line.removeprefix("error: ")
    assert not (tmp_path / "out").exists()


def test_the_worker_operator_decides_what_the_engine_may_read(cotrain_home: Path, tmp_path: Path):
    """Without the executor's enforce switch (a person's own `cotrain train`), or with the operator's
    COTRAIN_ALLOW_ANY_DATA_PATH or a wider COTRAIN_DATA_ROOTS, an outside path gets past the check
    (and fails only because it does not exist)."""
    missing = tmp_path / "elsewhere" / "corpus.txt"
    config = with_data_path(tiny_config(tmp_path / "own.toml", "own", max_steps=2), str(missing))
    done = run_engine(config, cotrain_home, **{ENFORCE_ENV: "1", ALLOW_ANY_ENV: "1"})
    assert done.returncode == 2 and "does not exist" in done.stderr and "outside" not in done.stderr, done.stderr
    # in-process from here: the same function the engine calls, on the real file system
    cfg = load_config(config)
    check_config_paths(cfg, {"COTRAIN_HOME": str(cotrain_home)})  # a person's own run: their choice
    enforced = {"COTRAIN_HOME": str(cotrain_home), ENFORCE_ENV: "1"}
    with pytest.raises(DataRootError, match="outside the data roots"):
        check_config_paths(cfg, enforced)
    check_config_paths(cfg, {**enforced, "COTRAIN_DATA_ROOTS": f"/nonexistent,{tmp_path / 'elsewhere'}"})
    check_config_paths(cfg, {**enforced, "COTRAIN_DATA_ROOTS": f"/nonexistent:{tmp_path}"})
    with pytest.raises(DataRootError):  # a root that is a string prefix of the path's folder is not its parent
        check_config_paths(cfg, {**enforced, "COTRAIN_DATA_ROOTS": str(tmp_path / "else")})


def test_the_engine_sees_through_links_inside_a_root(cotrain_home: Path, tmp_path: Path):
    root = tmp_path / "root"
    (root / "corpus" / "deep").mkdir(parents=True)
    (root / "corpus" / "a.txt").write_text("hello")
    env = {"COTRAIN_HOME": str(cotrain_home), ENFORCE_ENV: "1", "COTRAIN_DATA_ROOTS": str(root)}
    cfg = load_config(with_data_path(tiny_config(tmp_path / "l.toml", "l"), str(root / "corpus")))
    check_config_paths(cfg, env)  # a plain folder inside the root
    (root / "corpus" / "deep" / "leak.txt").symlink_to("/etc/passwd")
    with pytest.raises(DataRootError, match=r"holds the symlink .*leak\.txt, which leads to /etc/passwd"):
        check_config_paths(cfg, env)
    (root / "corpus" / "deep" / "leak.txt").unlink()
    (root / "corpus" / "deep" / "etc").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(DataRootError, match="which leads to /etc,"):
        check_config_paths(cfg, env)
    link = root / "to-etc"
    link.symlink_to("/etc", target_is_directory=True)
    for path in (str(link), str(root / ".." / ".." / "etc"), f"{root}/corpus/../../../../../../etc"):
        with pytest.raises(DataRootError, match="outside the data roots"):
            check_config_paths(load_config(with_data_path(tiny_config(tmp_path / "m.toml", "m"), path)), env)


def test_data_roots_setting_parses_commas_and_colons(tmp_path: Path):
    assert parse_roots(" /a, /b:/c ,,") == ["/a", "/b", "/c"]
    home = tmp_path / "home"
    assert data_roots({}, home) == [resolve(home / "datasets" / "raw")]
    assert data_roots({"COTRAIN_DATA_ROOTS": ""}, home) == [resolve(home / "datasets" / "raw")]
    roots = data_roots({"COTRAIN_DATA_ROOTS": f"{tmp_path}/x,{tmp_path}/x/../y"}, home)
    assert roots == [tmp_path / "x", tmp_path / "y"]
    # COTRAIN_DATA_ROOTS is a setting of the machine, not the config key `data.roots`
    assert load_config(tiny_config(tmp_path / "c.toml"), environ={"COTRAIN_DATA_ROOTS": "/x"}).data.dataset == "stdlib"


# ---- through the executor ----------------------------------------------------------------------

def finished(api: httpx.Client, sid: str) -> dict[str, Any] | None:
    row = api.get(f"/sessions/{sid}").json()
    return row if row["status"] in ("completed", "failed", "cancelled") else None


def test_a_worker_runs_only_paths_inside_its_roots_or_approved(platform: Platform, tmp_path: Path):
    """A config edited in the database (a compromised server) cannot make the worker's engine read
    /etc; a path an admin approved is added to that one run's roots, and only that path."""
    with platform.client(platform.member) as member:
        sid = member.post("/sessions", json=session({"dataPath": str(platform.root / "missing.txt")})).json()["id"]
        with platform.db() as db:
            (toml,) = db.execute("SELECT config_toml FROM training_sessions WHERE id = ?", (sid,)).fetchone()
            hacked = toml.replace(json.dumps(str(platform.root / "missing.txt")), '"/etc"')
            assert hacked != toml
            db.execute("UPDATE training_sessions SET config_toml = ? WHERE id = ?", (hacked, sid))
        assert member.post(f"/sessions/{sid}/start").status_code == 200
        failed = wait_until(lambda: finished(member, sid), 120, "the hacked session to fail")
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "data.data_path = '/etc' is outside the data roots of this machine" in failed["error"], failed["error"]
    assert str(platform.root) in failed["error"] and "Traceback" not in failed["error"]
    assert not (platform.home / "datasets" / "processed").exists() or not any(
        (platform.home / "datasets" / "processed").iterdir())  # nothing was read, nothing tokenized

    approved = tmp_path / "approved" / "missing.txt"
    with platform.client() as admin:
        sid = admin.post("/sessions", json=session({"dataPath": str(approved)}, autoStart=True)).json()["id"]
        failed = wait_until(lambda: finished(admin, sid), 120, "the approved session to fail")
    # past the roots check (the approved path was added to the run's roots): only the file is missing
    assert failed["status"] == "failed" and "does not exist" in failed["error"], failed["error"]
    assert "outside" not in failed["error"]


# ---- cotrain join --server -------------------------------------------------------------------

def test_join_takes_no_paths_from_the_server(platform: Platform, tmp_path: Path):
    """A session's config as a compromised server would serve it: every path, a wallet and listen
    addresses of the server's choosing, an unknown section. A real `cotrain join --server` drops
    them with a warning naming each, and will not train on other data than the session's."""
    with platform.client() as admin:
        body = session({"dataPath": "/srv/corpus"}, distributedConfig={"strategy": "diloco", "innerSteps": 2},
                       checkpointConfig={"interval": 2}, public=True)
        sid = admin.post("/sessions", json=body).json()["id"]
    with platform.db() as db:
        (toml,) = db.execute("SELECT config_toml FROM training_sessions WHERE id = ?", (sid,)).fetchone()
        config = tomllib.loads(toml)
        config["model"]["path"] = "/etc"
        config["data"]["tokenizer"] = "/etc/tokenizer.json"
        config["checkpoint"].update(output_path="/etc", resume="/root/ckpt")
        config["distributed"]["diloco"].update(wallet="0x5e11", host_maddrs=["/ip4/0.0.0.0/tcp/4444"])
        config["evil"] = {"path": "/etc"}
        db.execute("UPDATE training_sessions SET config_toml = ? WHERE id = ?", (tomli_w.dumps(config), sid))
    with platform.client() as admin:  # the whole config, as the session's owner sees it
        served = admin.get(f"/sessions/{sid}/join").json()
    kept, dropped = volunteer_config(tomllib.loads(served["config"]))
    expected = {"model.path", "data.data_path", "data.tokenizer", "checkpoint.output_path", "checkpoint.resume",
                "distributed.diloco.wallet", "distributed.diloco.host_maddrs", "evil"}
    assert set(dropped) == expected
    assert kept["model"]["size"] == "debug" and kept["distributed"]["diloco"]["inner_steps"] == 2
    assert kept["distributed"]["strategy"] == "diloco" and kept["train"]["max_steps"] == 2
    assert kept["data"] == {"seq_length": 64, "vocab_size": 512} and kept["checkpoint"] == {"interval": 2}
    assert "path" not in kept["model"] and "evil" not in kept

    home = tmp_path / "volunteer"
    home.mkdir()

    def join(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COTRAIN, "join", "--server", platform.server.url, "--session", sid, *args],
                              capture_output=True, text=True, timeout=120,
                              env=engine_env(home, COTRAIN_TOKEN=ADMIN_TOKEN))

    done = join()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    [warning] = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert all(key in warning for key in expected), warning
    assert "error: Session" in done.stderr and "--set data.data_path=PATH" in done.stderr, done.stderr
    # with its own copy of the data named, the volunteer gets past the data: the next problem is this
    # server's (no DHT node running), so the join went no further than a refusal
    done = join("--set", f"data.data_path={tmp_path / 'my-copy'}")
    assert done.returncode == 2 and "no running DHT node" in done.stderr, done.stderr
    assert not (home / "logs" / "training" / sid).exists()
