"""A full engine config sent to POST /api/v1/sessions (issue 17) gets the same rules as the JSON create:
a member who signed in with a fresh Aptos key tries to escape each rule by sending TOML instead, as
`{"engineConfig": ...}` and as an `application/toml` body. No worker runs (nothing trains), so
capacity never refuses and what is refused here is the rule under test."""

from __future__ import annotations

import signal
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.security.conftest import ServerProcess, api_token, wallet_sign_in
from tests.security.test_quotas import quiet_env

TINY = """
[model]
size = "debug"
[train]
batch_size = 8
max_steps = 40
[data]
dataset = "stdlib"
max_bytes = 300000
seq_length = 64
vocab_size = 512
"""


@dataclass
class Callers:
    server: ServerProcess
    member: httpx.Client
    maintainer: httpx.Client

    def total(self) -> int:
        return self.server.client().get("/sessions").json()["total"]


@pytest.fixture(scope="module")
def callers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callers]:
    home = tmp_path_factory.mktemp("engine-config") / "home"
    home.mkdir()
    server = ServerProcess(home, quiet_env(home)).start()
    member, _ = wallet_sign_in(server)
    yield Callers(server, server.client(member), server.client(api_token(server, "maintainer", "ops")))
    server.stop(signal.SIGTERM)


def send(client: httpx.Client, text: str, as_toml: bool, **fields: Any) -> httpx.Response:
    if as_toml and not fields:
        return client.post("/sessions", content=text.encode(), headers={"Content-Type": "application/toml"})
    return client.post("/sessions", json={"engineConfig": text, "autoStart": False, **fields})


def refused(answer: httpx.Response, status: int, *words: str, loc: list[str] | None = None) -> None:
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    text = detail if isinstance(detail, str) else " ".join(e["msg"] for e in detail)
    assert "Traceback" not in text
    for word in words:
        assert word in text, (word, text)
    if loc is not None:
        assert detail[0]["loc"] == loc, detail


@pytest.mark.parametrize("as_toml", [False, True], ids=["json-field", "toml-body"])
def test_a_members_toml_cannot_escape_a_rule(callers: Callers, as_toml: bool):
    before = callers.total()
    member = callers.member
    # data roots: /etc is outside them, however it is written
    refused(send(member, TINY.replace('dataset = "stdlib"', 'data_path = "/etc"'), as_toml), 422,
            "outside the data roots", loc=["body", "engineConfig", "data", "data_path"])
    refused(send(member, TINY.replace('dataset = "stdlib"', 'data_path = "datasets/raw/../../../../etc"'), as_toml),
            422, "outside the data roots")
    # paths the JSON create cannot even name
    refused(send(member, TINY + '[checkpoint]\noutput_path = "/etc"\n', as_toml), 422, "checkpoint.output_path",
            loc=["body", "engineConfig", "checkpoint", "output_path"])
    refused(send(member, TINY.replace('size = "debug"', 'size = "debug"\npath = "/etc"'), as_toml), 422,
            "model.path '/etc' is outside the data roots", loc=["body", "engineConfig", "model", "path"])
    refused(send(member, TINY.replace('vocab_size = 512', 'tokenizer = "/etc/ssl"'), as_toml), 422,
            "data.tokenizer")
    refused(send(member, TINY + '[checkpoint]\nresume = "/root"\n', as_toml), 422, "checkpoint.resume")
    # the member quotas: a 70B model, a world of 1000 processes, an unbounded run
    refused(send(member, TINY.replace('size = "debug"', 'size = "70B"'), as_toml), 403, "model.size", "70B")
    world = TINY.replace("batch_size = 8", "batch_size = 8000") + "[distributed]\nnodes = 100\ngpus_per_node = 10\n"
    refused(send(member, world, as_toml), 403, "1000 processes", "COTRAIN_QUOTA_WORLD_SIZE")
    refused(send(member, TINY.replace("max_steps = 40", "max_steps = 100000000"), as_toml), 403,
            "COTRAIN_QUOTA_TOKENS", "train.max_steps")
    # the JSON schema's hard limits hold for every role
    refused(send(member, TINY.replace("max_steps = 40", "max_steps = 10000000000000"), as_toml), 422,
            "train.max_steps", loc=["body", "engineConfig", "train", "max_steps"])
    # keys that act on the worker's machine
    diloco = '[distributed]\nstrategy = "diloco"\n[distributed.diloco]\n'
    for text, key in ((TINY + diloco + 'host_maddrs = ["/ip4/0.0.0.0/tcp/22"]\n', "host_maddrs"),
                      (TINY + diloco + 'wallet = "0x1"\n', "wallet"),
                      (TINY.replace("vocab_size = 512", "vocab_size = 512\nnum_proc = 10000"), "num_proc"),
                      # another session's TensorBoard folder and MLflow run name
                      (TINY + '[tracking]\nbackends = ["tensorboard"]\nrun_name = "someone-elses-id"\n', "run_name")):
        refused(send(member, text, as_toml), 403, "Your role (member) may not set", key, "maintainers and admins")
    assert callers.total() == before  # nothing was created


def test_a_members_priority_and_reward_pool_are_refused_with_a_toml_too(callers: Callers):
    before = callers.total()
    refused(send(callers.member, TINY, False, priority=50), 403, "priority of 50", "maintainers")
    refused(send(callers.member, TINY, False, rewardPool={"amount": 10**12}), 403, "reward pool")
    assert callers.total() == before


def test_a_members_valid_toml_is_accepted_and_stored_as_sent(callers: Callers):
    created = send(callers.member, TINY.replace("[model]", '[session]\nid = "taken"\nname = "mine"\n[model]'), False)
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["name"] == "mine" and session["id"] != "taken" and session["status"] == "draft"
    config = tomllib.loads(callers.member.get(f"/sessions/{session['id']}/config").text)
    assert config["session"] == {"id": session["id"], "name": "mine"}
    assert config["data"]["max_bytes"] == 300000 and config["train"]["max_steps"] == 40
    # its config is the TOML: field edits are refused, a member still cannot raise the priority by editing
    patched = callers.member.patch(f"/sessions/{session['id']}", json={"trainingConfig": {"maxSteps": 10**6}})
    refused(patched, 409, "created from an engine config")
    refused(callers.member.patch(f"/sessions/{session['id']}", json={"priority": 50}), 403, "priority of 50")
    renamed = callers.member.patch(f"/sessions/{session['id']}", json={"name": "renamed", "priority": -1})
    assert renamed.status_code == 200 and (renamed.json()["name"], renamed.json()["priority"]) == ("renamed", -1)


def test_a_maintainer_may_use_a_path_outside_the_roots_and_a_priority(callers: Callers):
    created = send(callers.maintainer, TINY.replace('dataset = "stdlib"', 'data_path = "/srv/corpus"'), False,
                   priority=50)
    assert created.status_code == 201, created.text
    config = callers.maintainer.get(f"/sessions/{created.json()['id']}/config").text
    assert 'data_path = "/srv/corpus"' in config and created.json()["priority"] == 50
    # but checkpoint.output_path is the server's, for every role
    refused(send(callers.maintainer, TINY + '[checkpoint]\noutput_path = "/tmp/x"\n', False), 422, "set by this server")
