"""The transport-free parts of the client: create bodies (files, dicts, --set overrides), the log
follower, the live stream's cursor, and the stored login (mode 600, XDG_CONFIG_HOME, which token
goes to which server). No server needed."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from cotrain.client import CotrainError, MessageOut, create_body
from cotrain.client.core import EventCursor, LogFollower
from cotrain.client.credentials import login_path, resolve, save_login
from tests.client.conftest import TEMPLATE


def test_create_bodies_from_a_toml_a_json_and_a_dict(tmp_path: Path):
    body = create_body(TEMPLATE)
    assert body == {"engineConfig": TEMPLATE.read_text()}  # sent as written, comments and all
    changed = create_body(TEMPLATE, overrides=["train.max_steps=40", "data.dataset=\"stdlib\""], priority=-1,
                          auto_start=False)
    config = tomllib.loads(changed["engineConfig"])
    assert config["train"]["max_steps"] == 40 and config["model"]["size"] == "tiny"
    assert (changed["priority"], changed["autoStart"]) == (-1, False)
    design = tmp_path / "session.json"
    design.write_text(json.dumps({"name": "x", "trainingConfig": {"batchSize": 8}}))
    assert create_body(design, overrides=["trainingConfig.maxSteps=12", "public=false"]) == {
        "name": "x", "trainingConfig": {"batchSize": 8, "maxSteps": 12}, "public": False}
    assert create_body({"name": "y"}, max_retries=0) == {"name": "y", "maxRetries": 0}
    for bad, words in ((tmp_path / "x.yaml", "No such file"), (TEMPLATE.with_suffix(".txt"), "No such file")):
        with pytest.raises(CotrainError, match=words):
            create_body(bad)
    (tmp_path / "x.yaml").write_text("a: 1")
    with pytest.raises(CotrainError, match="give a .toml engine config or a .json"):
        create_body(tmp_path / "x.yaml")
    with pytest.raises(CotrainError, match="section.key=value"):
        create_body(TEMPLATE, overrides=["max_steps"])


def test_the_log_follower_prints_each_line_once():
    follower = LogFollower()
    assert follower.new_lines(["a", "b", "c"]) == ["a", "b", "c"]
    assert follower.new_lines(["b", "c"]) == []
    assert follower.new_lines(["b", "c", "d", "e"]) == ["d", "e"]
    assert follower.new_lines(["c", "d", "e", "f"]) == ["f"]


def test_the_cursor_skips_what_it_delivered_and_sees_gaps():
    cursor = EventCursor("s1")
    assert json.loads(cursor.subscribe()) == {"action": "subscribe", "sessionId": "s1", "after": 0}
    assert cursor.receive('{"event": "subscribed", "data": {"sessionId": "s1", "seq": 7}}').ack_seq == 7
    first = cursor.receive('{"event": "training.progress", "data": {"sessionId": "s1", "seq": 1}}')
    assert first.message is not None and not first.gap and cursor.deliver(first.message)
    assert cursor.receive('{"event": "training.progress", "data": {"sessionId": "s1", "seq": 1}}').message is None
    assert cursor.receive('{"event": "training.progress", "data": {"sessionId": "s2", "seq": 2}}').message is None
    assert cursor.receive('{"event": "training.progress", "data": {"sessionId": "s1", "seq": 3}}').gap
    final = MessageOut(seq=2, event="training.status", time=0.0, data={"status": "failed"})
    assert cursor.deliver(final) and cursor.ending and not cursor.done  # the transport asks the server
    assert json.loads(cursor.subscribe())["after"] == 2
    refused = cursor.receive('{"event": "error", "data": {"sessionId": "s1", "message": "no", "retryAfter": 3}}')
    assert (refused.error, refused.retry_after) == ("no", 3)


def test_the_stored_login_is_private_and_its_token_stays_with_its_server(tmp_path: Path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    path = save_login("http://a.example:8000/", "ct_a", env)
    assert path == tmp_path / "xdg" / "cotrain" / "login.json" == login_path(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert resolve(environ=env) == resolve(None, None, env)
    assert (resolve(environ=env).server, resolve(environ=env).token) == ("http://a.example:8000", "ct_a")
    assert resolve("http://b.example", environ=env).token is None  # never the stored token for another server
    assert resolve("http://b.example", "ct_b", env).token == "ct_b"
    assert resolve(environ={**env, "COTRAIN_SERVER": "http://b.example", "COTRAIN_TOKEN": "ct_env"}).token == "ct_env"
    assert resolve(environ={**env, "COTRAIN_TOKEN": "ct_env"}).token == "ct_env"
    relative = {"XDG_CONFIG_HOME": "relative/dir", "HOME": str(tmp_path / "home")}
    assert login_path(relative).is_absolute()  # a relative XDG_CONFIG_HOME is ignored (XDG spec)
    with pytest.raises(CotrainError, match="cotrain login --server"):
        resolve(environ={"XDG_CONFIG_HOME": str(tmp_path / "empty")})
