"""The UI's logic without a browser: translations, the form's validation and estimate, formatting,
and the JSON fallback for unknown API paths."""

from __future__ import annotations

import re

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from cotrain.ui import format as fmt
from cotrain.ui import i18n, session_form
from cotrain.ui.api_fallback import add_api_fallback

KNOWN = {("name",), ("trainingConfig", "batchSize"), ("modelConfig", "size"), ("modelConfig", "type"),
         ("distributedConfig", "strategy"), ("dataConfig", "seqLength")}


def test_every_english_string_has_a_chinese_one_with_the_same_placeholders() -> None:
    assert set(i18n.ZH) == set(i18n.EN)
    for key, text in i18n.EN.items():
        assert set(re.findall(r"{(\w+)}", text)) == set(re.findall(r"{(\w+)}", i18n.ZH[key])), key


def test_the_form_reports_the_servers_messages_on_the_fields() -> None:
    bad = session_form.check({("name",): "x", ("trainingConfig", "batchSize"): 0.0}, KNOWN)
    assert not bad.ok and bad.errors == {("trainingConfig", "batchSize"): "Input should be greater than 0"}
    size = session_form.check({("name",): "x", ("modelConfig", "type"): "bert", ("modelConfig", "size"): "7B"}, KNOWN)
    assert not size.ok and "modelConfig.size" in size.errors[("modelConfig", "size")]
    empty = session_form.check({("name",): ""}, KNOWN)
    assert ("name",) in empty.errors


def test_a_valid_form_gives_the_config_preview_and_estimate() -> None:
    checked = session_form.check(
        {("name",): "big", ("modelConfig", "type"): "llama2", ("modelConfig", "size"): "7B",
         ("trainingConfig", "batchSize"): 32.0, ("distributedConfig", "strategy"): "ddp",
         ("dataConfig", "seqLength"): 2048.0}, KNOWN)
    assert checked.ok and checked.config is not None
    toml = session_form.preview_toml(checked.config)
    assert 'size = "7B"' in toml and "seq_length = 2048" in toml and 'id = "preview"' not in toml
    estimate = session_form.estimate(checked.config)
    assert estimate is not None and 6.5e9 < estimate.parameters < 7e9 and estimate.memory_bytes > 100 * 2**30


def test_diloco_compression_from_the_form_reaches_the_config() -> None:
    checked = session_form.check(
        {("name",): "dl", ("distributedConfig", "strategy"): "diloco", ("distributedConfig", "innerSteps"): 50.0,
         ("distributedConfig", "compression"): "int8"}, KNOWN | {("distributedConfig", "compression")})
    assert checked.ok and checked.config is not None
    assert checked.config.distributed.diloco.compression == "int8"
    assert 'compression = "int8"' in session_form.preview_toml(checked.config)
    bad = session_form.check({("name",): "dl", ("distributedConfig", "compression"): "zip"},
                             KNOWN | {("distributedConfig", "compression")})
    assert ("distributedConfig", "compression") in bad.errors


def test_numbers_read_like_people_write_them() -> None:
    assert fmt.count(6_738_415_616) == "6.74B"
    assert fmt.count(165_000) == "165K"
    assert fmt.size(1536) == "1.5 KiB"
    assert fmt.duration(3725) == "1h 02m"
    assert fmt.duration(None) == "—"


def test_unknown_api_paths_answer_json_404_and_405() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/api/v1")

    @router.post("/things")
    def make() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(router)
    add_api_fallback(app)
    client = TestClient(app)
    assert client.post("/api/v1/things").json() == {"ok": "yes"}
    missing = client.get("/api/v1/nothing")
    assert missing.status_code == 404 and "/docs" in missing.json()["detail"]
    wrong = client.get("/api/v1/things")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_peer_rows_share_the_tokens_and_eta_follows_the_pace() -> None:
    from cotrain.ui.session_view import eta_seconds, peer_rows

    rows = peer_rows([{"peer_id": "a", "tokens": 300, "tokens_per_second": 10.0, "step": 5, "updated": 1.0},
                      {"peer_id": "b", "tokens": 100, "step": 4}], now=2.0)
    assert [(r["peer_id"], r["share"]) for r in rows] == [("a", 0.75), ("b", 0.25)]
    assert peer_rows([{"peer_id": "c"}], now=0.0)[0]["share"] is None
    assert eta_seconds([(10, 100.0), (20, 110.0)], total_steps=40) == 20.0
    assert eta_seconds([(10, 100.0)], total_steps=40) is None
