"""The data roots rule (issue 11) for `data.dataset = "hf:/path"` (issue 17): a save_to_disk folder is a
path like `dataPath`, so the server holds a member's to COTRAIN_DATA_ROOTS, the engine a worker starts
holds it to the worker's own roots (links inside it included), and a volunteer never takes it from
a server. `hf:NAME` names a dataset of the worker's own Hugging Face cache and is no path.

One real `cotrain up` (SQLite) serves the module; every session is a draft, nothing trains.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cotrain.cli.errors import UserError
from cotrain.cli.p2p_cmd import _check_dropped
from cotrain.config import load_config
from cotrain.core.path_guard import ALLOW_ANY_ENV, ENFORCE_ENV, DataRootError, check_config_paths
from cotrain.data_roots import resolve
from cotrain.p2p.server_join import volunteer_config
from tests.conftest import tiny_config
from tests.security.conftest import ADMIN_TOKEN, ServerProcess, api_token, wallet_sign_in

DRAFT = {"autoStart": False, "public": False}


@dataclass
class Platform:
    server: ServerProcess
    home: Path
    root: Path  # the server's one data root, resolved
    member: str
    maintainer: str

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        return self.server.client(token)

    def approval(self, sid: str) -> dict[str, Any] | None:
        with sqlite3.connect(self.home / "cotrain.db", timeout=30) as db:
            (value,) = db.execute("SELECT data_path_approval FROM training_sessions WHERE id = ?", (sid,)).fetchone()
        return json.loads(value) if value else None


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("hf-roots") / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "COTRAIN_DATA_ROOTS", ENFORCE_ENV, ALLOW_ANY_ENV)}
    env.update(
        COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0", HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
        COTRAIN_RATE_SESSION_CREATE="1000/hour", COTRAIN_RATE_LIMIT_NAMESPACE=f"test-hf-roots-{os.getpid()}",
    )
    server = ServerProcess(home, env).start()
    try:
        member, _ = wallet_sign_in(server)
        yield Platform(server, home, resolve(home / "datasets" / "raw"), member,
                       api_token(server, "maintainer", "maintainer"))
    finally:
        server.stop()


def session(dataset: str, **data: Any) -> dict[str, Any]:
    return {"name": "hf", "modelConfig": {"size": "debug"}, "trainingConfig": {"batchSize": 8, "maxSteps": 2},
            "dataConfig": {"seqLength": 64, "vocabSize": 512, "dataset": dataset, **data}, **DRAFT}


def refused(answer: httpx.Response, platform: Platform) -> str:
    """422 on dataConfig.dataset, one sentence naming the roots and who may go further."""
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "dataConfig", "dataset"] and error["type"] == "data_path_outside_roots", error
    msg = error["msg"]
    assert str(platform.root) in msg and "maintainers and admins" in msg and "COTRAIN_DATA_ROOTS" in msg, msg
    assert "\n" not in msg
    return msg


# ---- the server ------------------------------------------------------------------------------


def test_a_members_saved_dataset_outside_the_roots_is_refused(platform: Platform):
    root = platform.root
    (root / "etc-link").unlink(missing_ok=True)
    (root / "etc-link").symlink_to("/etc", target_is_directory=True)
    escapes = ["hf:/etc", f"hf:{root}/../../../../../../../etc", f"hf:{root}/etc-link", "hf:~/.ssh",
               "hf:../../../../../../../etc", "hf:./datasets/raw-private/wiki", f"hf:{root}-private/wiki"]
    with platform.client(platform.member) as member:
        before = member.get("/sessions").json()["total"]
        for dataset in escapes:
            msg = refused(member.post("/sessions", json=session(dataset)), platform)
            assert f"dataConfig.dataset {dataset!r} names the folder" in msg, msg
        assert "'/etc'" not in refused(member.post("/sessions", json=session(f"hf:{root}/etc-link")), platform)
        assert member.get("/sessions").json()["total"] == before
        # an edit is held to the same rule
        sid = member.post("/sessions", json=session("stdlib")).json()["id"]
        refused(member.patch(f"/sessions/{sid}", json={"dataConfig": {"dataset": "hf:/etc"}}), platform)


def test_a_members_saved_dataset_inside_the_roots_and_cached_names_are_accepted(platform: Platform):
    (platform.root / "wiki").mkdir(exist_ok=True)
    with platform.client(platform.member) as member:
        for dataset in (f"hf:{platform.root}/wiki", "hf:./datasets/raw/wiki", f"hf:{platform.root}/x/../wiki",
                        "hf:Salesforce/wikitext:wikitext-2-raw-v1", "hf:wikitext"):
            created = member.post("/sessions", json=session(dataset, split="train[:10%]", textColumn="body"))
            assert created.status_code == 201, (dataset, created.text)
            sid = created.json()["id"]
            assert platform.approval(sid) is None
            toml = member.get(f"/sessions/{sid}/config").text
            assert f'dataset = "{dataset}"' in toml and 'split = "train[:10%]"' in toml, toml
            assert 'text_column = "body"' in toml, toml


def test_malformed_hf_datasets_are_refused_for_everyone(platform: Platform):
    with platform.client() as admin:
        for dataset in ("hf:", "hf:a/b/c", "hf:wiki corpus", "huggingface:wiki", "hf:wiki\x00"):
            answer = admin.post("/sessions", json=session(dataset))
            assert answer.status_code == 422, (dataset, answer.text)
            assert answer.json()["detail"][0]["loc"][-1] == "dataset", answer.text
        # a builder of the datasets library would read the server's COTRAIN_HOME (the runs' folder)
        answer = admin.post("/sessions", json=session("hf:json"))
        assert answer.status_code == 422 and "builder of the datasets library" in answer.text, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", "dataConfig", "dataset"]


def test_maintainers_may_name_a_folder_outside_and_the_approval_is_that_path(platform: Platform, tmp_path: Path):
    outside = tmp_path / "corpus"
    with platform.client(platform.maintainer) as maintainer:
        created = maintainer.post("/sessions", json=session(f"hf:{outside}"))
        assert created.status_code == 201, created.text
        approval = platform.approval(created.json()["id"])
    assert approval["path"] == str(resolve(outside)) and approval["dataset"] == f"hf:{outside}"
    assert approval["role"] == "maintainer"


# ---- the engine ------------------------------------------------------------------------------


def hf_config(path: Path, dataset: str):
    config = tiny_config(path, "hf")
    config.write_text(config.read_text().replace('dataset = "stdlib"', f"dataset = {json.dumps(dataset)}"))
    return load_config(config)


def test_the_engine_holds_a_saved_dataset_to_the_workers_roots(cotrain_home: Path, tmp_path: Path):
    root = tmp_path / "root"
    (root / "wiki" / "train").mkdir(parents=True)
    env = {"COTRAIN_HOME": str(cotrain_home), ENFORCE_ENV: "1", "COTRAIN_DATA_ROOTS": str(root)}
    check_config_paths(hf_config(tmp_path / "a.toml", f"hf:{root}/wiki"), env)
    check_config_paths(hf_config(tmp_path / "b.toml", "hf:Salesforce/wikitext"), env)  # the worker's own cache
    for dataset in ("hf:/etc", f"hf:{root}/../../../../../../etc", f"hf:{root}-private/wiki"):
        with pytest.raises(DataRootError, match=r"data\.dataset = .* is outside the data roots"):
            check_config_paths(hf_config(tmp_path / "c.toml", dataset), env)
    (root / "wiki" / "train" / "data-00000-of-00001.arrow").symlink_to("/etc/passwd")
    with pytest.raises(DataRootError, match=r"holds the symlink .*arrow, which leads to /etc/passwd"):
        check_config_paths(hf_config(tmp_path / "d.toml", f"hf:{root}/wiki"), env)
    check_config_paths(hf_config(tmp_path / "e.toml", "hf:/etc"), {**env, ALLOW_ANY_ENV: "1"})  # the operator's switch


# ---- cotrain join --server -------------------------------------------------------------------


def test_a_volunteer_never_takes_a_saved_dataset_path_from_a_server():
    served = {"data": {"dataset": "hf:/etc", "split": "train", "text_column": "body", "seq_length": 64}}
    kept, dropped = volunteer_config(served)
    assert dropped == ["data.dataset"] and kept == {"data": {"split": "train", "text_column": "body", "seq_length": 64}}
    with pytest.raises(UserError, match=r"\(data\.dataset\).*--set data\.dataset=hf:/PATH"):
        _check_dropped("s1", dropped, [])
    _check_dropped("s1", dropped, ["data.dataset=hf:/home/me/wiki"])  # the volunteer's own copy
    for name in ("stdlib", "hf:Salesforce/wikitext:wikitext-2-raw-v1"):
        assert volunteer_config({"data": {"dataset": name}}) == ({"data": {"dataset": name}}, [])
