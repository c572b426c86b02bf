"""`cotrain.client` against a real `cotrain up`: a session created from the tiny engine TOML trains
on the real engine while `Client.watch` follows it over the WebSocket through a proxy that cuts the
connection mid-run (twice); every seq arrives exactly once and in order. Then what the run produced
(logs, checkpoints, model versions, the zip) is read through the client, the zip loads with
transformers, the async client reads the same things, and refusals arrive as CotrainError carrying
the server's sentence."""

from __future__ import annotations

import asyncio
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from cotrain.client import AsyncClient, Client, CotrainError, MessageOut, ModelVersionOut, SessionOut
from tests.client.conftest import ADMIN_TOKEN, TEMPLATE, TINY_SET, DroppingProxy, reference_session
from tests.security.conftest import api_token

pytestmark = pytest.mark.slow


@dataclass
class Trained:
    session: SessionOut
    messages: list[MessageOut]
    drops: int


@pytest.fixture(scope="module")
def trained(platform, proxy: DroppingProxy) -> Trained:
    """The tiny TOML, created and watched through the proxy, which cuts the WebSocket at step 10 and 24."""
    with Client(proxy.url, ADMIN_TOKEN) as client:
        session = client.create_session(TEMPLATE, overrides=TINY_SET, name="client test")
        assert session.status == "queued" and session.total_steps == 40, session
        messages, drops, cut_at = [], 0, [10, 24]
        for message in client.watch(session.id, idle=5):
            messages.append(message)
            step = message.data.get("step") or 0
            if message.event == "training.progress" and cut_at and step >= cut_at[0]:
                cut_at.pop(0)
                drops += proxy.drop_websockets()
        return Trained(client.get_session(session.id), messages, drops)


def test_watch_resumes_after_the_connection_is_cut_and_loses_no_seq(trained: Trained, proxy: DroppingProxy):
    assert trained.session.status == "completed", trained.session.error
    seqs = [m.seq for m in trained.messages]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # nothing lost, nothing twice, in order
    assert trained.drops >= 2 and proxy.websockets_opened >= 3, (trained.drops, proxy.websockets_opened)
    steps = [m.data["step"] for m in trained.messages if m.event == "training.progress"]
    assert steps == list(range(2, 41, 2)), steps  # every progress event of the run (log_interval 2)
    last = trained.messages[-1]
    assert (last.event, last.data["status"]) == ("training.status", "completed")
    assert {m.event for m in trained.messages} >= {"training.status", "training.progress", "training.eval",
                                                   "training.checkpoint"}


def test_the_stored_config_is_the_submitted_toml_with_the_servers_id(platform, trained: Trained):
    import tomllib

    with Client(platform.url, ADMIN_TOKEN) as client:
        stored = tomllib.loads(client.session_config(trained.session.id))
        session = client.get_session(trained.session.id)
    submitted = tomllib.loads(TEMPLATE.read_text())
    assert stored["session"] == {"id": trained.session.id, "name": "client test"}
    assert stored["train"]["max_steps"] == 40 and stored["train"]["schedule"] == submitted["train"]["schedule"]
    assert stored["data"]["dataset"] == "stdlib" and "output_path" not in stored["checkpoint"]
    assert "engineConfig" in session.request and "max_steps = 40" in session.request["engineConfig"]


def test_wait_logs_checkpoints_and_model_versions(platform, trained: Trained):
    with Client(platform.url, ADMIN_TOKEN) as client:
        sid = trained.session.id
        assert client.wait(sid, timeout=5).status == "completed"
        tail = client.logs(sid, lines=50)
        followed = list(client.follow_logs(sid, lines=50, poll=0.1))  # a final session: the tail, then it ends
        assert tail and followed == tail
        steps = [c.step for c in client.checkpoints(sid)]
        assert steps and max(steps) == 40
        assert client.metrics(sid, max_points=10).total_points >= 20
        # run it again (it resumes at its last step): a second version, then compare them
        assert client.start_session(sid).status == "queued"
        assert client.wait(sid, timeout=240).status == "completed"
        v1, v2 = client.list_models(sid)
        assert isinstance(v1, ModelVersionOut) and (v1.name, v2.name) == ("v1", "v2")
        compared = client.compare_models([v1.id, v2.id])
        assert [row["version"] for row in compared["versions"]] == ["v1", "v2"]
        assert compared["best"]["val_loss"] in (v1.id, v2.id)
        assert client.session_rewards(sid)["sessionId"] == sid


def test_the_downloaded_model_loads_with_transformers(platform, trained: Trained, tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with Client(platform.url, ADMIN_TOKEN) as client:
        path = client.download_session_model(trained.session.id, tmp_path)
        version = max(client.list_models(trained.session.id), key=lambda v: v.version)
    assert path.parent == tmp_path and path.name == f"{trained.session.id}-v{version.version}.zip"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path)
    folder = tmp_path / path.stem
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tokenizer("def main():", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] >= tokenizer.vocab_size and torch.isfinite(logits).all()
    assert not list(tmp_path.glob("*.part"))


def test_the_async_client_reads_the_same_and_replays_after_a_seq(platform, trained: Trained, tmp_path: Path):
    sid, total = trained.session.id, trained.messages[-1].seq

    async def main() -> tuple[SessionOut, list[int], int, Path, int]:
        async with AsyncClient(platform.url, ADMIN_TOKEN) as client:
            session = await client.get_session(sid)
            seqs = [m.seq async for m in client.watch(sid, after=total - 5)]  # a final session: replay, then end
            page = await client.list_sessions(status="completed")
            path = await client.download_session_model(sid, tmp_path)
            try:
                await client.get_session("nosuchsession")
            except CotrainError as exc:
                status = exc.status
            return session, seqs, page.total, path, status

    session, seqs, completed, path, status = asyncio.run(main())
    assert session.status == "completed" and completed >= 1
    assert seqs[:5] == list(range(total - 4, total + 1))  # exactly what came after seq total-5
    assert zipfile.is_zipfile(path) and status == 404


def test_refusals_are_cotrain_errors_with_the_servers_sentence(platform, trained: Trained):
    member = api_token(platform, "member", "client-member")
    with Client(platform.url, member) as client:
        with pytest.raises(CotrainError) as missing:
            client.get_session("nosuchsession")
        assert missing.value.status == 404 and "No session 'nosuchsession'" in missing.value.message
        with pytest.raises(CotrainError) as foreign:
            client.cancel_session(trained.session.id)
        assert foreign.value.status == 403 and "belongs to another user" in foreign.value.message
        with pytest.raises(CotrainError) as bad:
            client.create_session({"engineConfig": "[train]\nbatch_size = 0\n"})
        assert bad.value.status == 422 and "train.batch_size = 0" in bad.value.message
        assert bad.value.detail[0]["loc"] == ["body", "engineConfig", "train", "batch_size"]
        with pytest.raises(CotrainError) as typo:
            client.create_session(reference_session(trainingConfig={"batchSize": "eight"}))
        assert typo.value.status == 422 and typo.value.message.startswith("trainingConfig.batchSize:")
    with Client(platform.url, ADMIN_TOKEN) as client:  # capacity: no worker here can ever run it
        with pytest.raises(CotrainError) as too_big:
            client.create_session(TEMPLATE, overrides=["model.size=70B"])
        assert too_big.value.status == 422 and "llama2 70B needs about" in too_big.value.message
        assert too_big.value.detail[0]["loc"] == ["body", "engineConfig", "model", "size"]
    with Client(platform.url, "ct_not_a_token") as client, pytest.raises(CotrainError) as unknown:
        client.list_sessions()
    assert unknown.value.status == 401
    with Client("http://127.0.0.1:9", ADMIN_TOKEN) as client, pytest.raises(CotrainError) as down:
        client.get_session("x")
    assert down.value.status is None and "Could not reach the CoTrain server at http://127.0.0.1:9" in str(down.value)
    with pytest.raises(CotrainError, match="not a server address"):
        Client("127.0.0.1:8000")


def test_lifecycle_from_a_dict_and_a_design_json_file_and_429(servers, tmp_path: Path):
    """A member on a server without a worker (nothing runs) that allows two new sessions per hour per caller."""
    server = servers(COTRAIN_EMBEDDED_WORKER="0", COTRAIN_RATE_SESSION_CREATE="2/hour")
    with Client(server.url, api_token(server, "member", "lifecycle")) as client:
        draft = client.create_session(reference_session(autoStart=False, name="from a dict"))
        assert draft.status == "draft" and draft.name == "from a dict"
        body = tmp_path / "session.json"
        body.write_text(json.dumps(reference_session()))
        queued = client.create_session(body, overrides=["trainingConfig.maxSteps=12"], priority=-3, public=False)
        assert (queued.status, queued.total_steps, queued.priority, queued.public) == ("queued", 12, -3, False)
        with pytest.raises(CotrainError) as limited:
            client.create_session(reference_session())
        assert limited.value.status == 429 and limited.value.retry_after and limited.value.retry_after > 0
        assert "new sessions" in limited.value.message

        assert client.start_session(draft.id).status == "queued"
        assert client.cancel_session(draft.id).status == "cancelled"
        assert client.retry_session(draft.id).status == "queued"
        assert client.set_priority(draft.id, -5).priority == -5
        assert client.update_session(draft.id, {"trainingConfig": {"maxSteps": 8}}).total_steps == 8
        assert client.cancel_session(draft.id).status == "cancelled"
        assert [s.id for s in client.list_sessions(status="cancelled").items] == [draft.id]
        with pytest.raises(CotrainError, match="still queued after"):
            client.wait(queued.id, timeout=0.5, poll=0.1)
        client.delete_session(draft.id)
        with pytest.raises(CotrainError) as gone:
            client.get_session(draft.id)
        assert gone.value.status == 404
        with pytest.raises(CotrainError, match="No such file"):
            client.create_session(tmp_path / "missing.toml")
