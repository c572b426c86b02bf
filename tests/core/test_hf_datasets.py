"""`data.dataset = "hf:..."`: a Hugging Face dataset from a save_to_disk folder or the local datasets
cache trains like the other corpora, offline, and every way it can be missing or wrong is one
sentence. The datasets are built here, from the standard library's sources, with `datasets` itself."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import datasets
import pytest

from cotrain.config import ConfigError, validate_config
from cotrain.core.corpus import DataSourceError
from cotrain.core.data import prepare_dataset
from cotrain.paths import Layout
from tests.conftest import engine_env, tiny_config

COTRAIN = str(Path(sys.executable).with_name("cotrain"))
NAME = "cotrain-test/py_sources"  # the Hub name the cached copy answers to


def stdlib_texts(limit: int = 250_000) -> list[dict]:
    """Rows of the standard library's top-level modules, up to `limit` bytes of source."""
    rows, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(errors="replace")
        if not text:
            continue
        rows.append({"path": path.name, "content": text, "size": len(text.encode())})
        total += len(text.encode())
        if total >= limit:
            break
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return stdlib_texts()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, rows: list[dict]) -> Path:
    """A DatasetDict (train, test) written by save_to_disk into a data root."""
    root = tmp_path_factory.mktemp("roots") / "raw"
    folder = root / "py_sources"
    train = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": train, "test": train.select(range(5))}).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory, rows: list[dict]) -> Path:
    """A Hugging Face datasets cache holding NAME as `load_dataset(NAME)` leaves it on a connected
    machine: <cache>/cotrain-test___py_sources/default/0.0.0/<commit>/{py_sources-train.arrow,
    dataset_info.json}. The library's own json builder writes it, offline, from a local file."""
    from datasets.packaged_modules.json.json import Json

    base = tmp_path_factory.mktemp("hf")
    source = base / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = base / "cache"
    owner, short = NAME.split("/")
    builder = Json(cache_dir=str(cache), dataset_name=short, config_id="default", hash="0123456789abcdef",
                   data_files={"train": str(source), "validation": str(source)})
    builder.download_and_prepare()
    shutil.move(cache / short, cache / f"{owner}___{short}")  # the owner's part of the folder name, as the Hub's
    return cache


def files_of(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def events_of(home: Path, session: str) -> list[dict]:
    path = home / "logs" / "training" / session / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def hf_config(path: Path, session: str, dataset: str, extra: str = "", max_steps: int = 30) -> Path:
    config = tiny_config(path, session, max_steps=max_steps, interval=max_steps)
    config.write_text(config.read_text().replace('dataset = "stdlib"', f'dataset = "{dataset}"\n{extra}'))
    return config


def one_error_line(stderr: str) -> str:
    """The run's stderr holds one `error:` line and no traceback; returns its sentence."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0].removeprefix("error: ")


# ---- training on it ----------------------------------------------------------------------------


def test_cotrain_train_on_a_save_to_disk_folder_inside_the_data_roots(cotrain_home: Path, tmp_path: Path,
                                                                       saved: Path, rows: list[dict]):
    """The run a worker would start (data roots enforced, the folder inside them) trains a BPE
    tokenizer on the dataset's text column and completes; nothing is written beside the data."""
    before = files_of(saved)
    config = hf_config(tmp_path / "hf.toml", "hf-saved", f"hf:{saved}", 'text_column = "content"\nsplit = "train"')
    env = engine_env(cotrain_home, COTRAIN_ENFORCE_DATA_ROOTS="1", COTRAIN_DATA_ROOTS=str(saved.parent))
    result = subprocess.run([COTRAIN, "train", str(config)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    events = events_of(cotrain_home, "hf-saved")
    assert events[0]["type"] == "started" and events[-1]["type"] == "completed"
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, 31))
    assert any(e["type"] == "eval" and e["val_perplexity"] > 1 for e in events)
    metas = [json.loads(p.read_text()) for p in (cotrain_home / "datasets" / "processed").glob("*/meta.json")]
    [meta] = [m for m in metas if m["source"] == f"hf:{saved}" and m["vocab_size"] == 512]
    detail = meta["splits_detail"]
    assert detail["dataset"] == f"hf:{saved}" and detail["text_column"] == "content" and detail["split"] == "train"
    # max_bytes = 300000 is more than the dataset holds: every row is a document, 512 tokens learned
    assert meta["documents"] == len(rows) and meta["vocab_size"] == 512
    assert files_of(saved) == before  # no cache files beside the user's data


def test_max_bytes_bounds_what_is_read_and_the_split_slices(cotrain_home: Path, saved: Path, rows: list[dict]):
    layout = Layout.from_env().ensure()
    base = {"dataset": f"hf:{saved}", "text_column": "content", "vocab_size": 300}
    bounded = prepare_dataset(validate_config({"data": {**base, "max_bytes": 40_000}}).data, layout)
    total, expected = 0, 0
    for row in rows:  # the rows up to the one that reaches max_bytes, as for files
        total += row["size"]
        expected += 1
        if total >= 40_000:
            break
    assert bounded.meta["documents"] == expected < len(rows)

    sliced = prepare_dataset(validate_config({"data": {**base, "split": "test[:3]+train[:4]"}}).data, layout)
    assert sliced.meta["documents"] == 7


# ---- the local Hugging Face cache, by name -----------------------------------------------------


def test_a_cached_dataset_loads_by_name_and_the_network_is_never_tried(cotrain_home: Path, hf_cache: Path,
                                                                        rows: list[dict]):
    """HF_DATASETS_OFFLINE=0 and HF_HUB_OFFLINE=0 in the environment, and the Hub's address a local
    socket that records any connection: the load stays offline all the same."""
    hub = socket.socket()
    hub.bind(("127.0.0.1", 0))
    hub.listen(8)
    hub.setblocking(False)
    env = {**engine_env(cotrain_home, HF_DATASETS_CACHE=str(hf_cache)), "HF_DATASETS_OFFLINE": "0",
           "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}"}
    try:
        for dataset, split, documents in ((f"hf:{NAME}", "train", len(rows)),
                                          (f"hf:{NAME}:default", "validation[:4]", 4)):
            result = subprocess.run(
                [COTRAIN, "data", "prepare", "--dataset", dataset, "--vocab-size", "400",
                 "--set", "data.text_column=content", "--set", f"data.split={split}"],
                capture_output=True, text=True, env=env, timeout=120,  # a try of the network would hang here
            )
            assert result.returncode == 0, result.stderr[-3000:]
            root = Path(result.stdout.split("prepared ", 1)[1].split("\n", 1)[0])
            meta = json.loads((root / "meta.json").read_text())
            assert meta["source"] == dataset and meta["documents"] == documents
        with pytest.raises(BlockingIOError):
            hub.accept()  # nobody knocked
    finally:
        hub.close()


# ---- one sentence for each way it goes wrong ---------------------------------------------------


def test_a_missing_dataset_fails_the_run_with_one_sentence(cotrain_home: Path, tmp_path: Path, hf_cache: Path):
    """As the engine reports config errors: exit 2, one `error:` line, a `failed` event with it."""
    config = hf_config(tmp_path / "missing.toml", "hf-missing", "hf:cotrain-test/not_here:wikitext-2-raw-v1")
    env = engine_env(cotrain_home, HF_DATASETS_CACHE=str(hf_cache))
    result = subprocess.run([COTRAIN, "train", str(config)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    sentence = one_error_line(result.stderr)
    for part in ("cotrain-test/not_here", str(hf_cache), "HF_DATASETS_OFFLINE=1",
                 'datasets.load_dataset("cotrain-test/not_here", "wikitext-2-raw-v1").save_to_disk(',
                 "cotrain-test___not_here"):
        assert part in sentence, sentence
    failed = [e for e in events_of(cotrain_home, "hf-missing") if e["type"] == "failed"]
    assert [e["error"] for e in failed] == [sentence] and "traceback" not in failed[0]

    # a save_to_disk folder that is not there: the same, through `cotrain data prepare`
    gone = tmp_path / "gone"
    result = subprocess.run([COTRAIN, "data", "prepare", "--dataset", f"hf:{gone}"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 2
    sentence = one_error_line(result.stderr)
    assert f"there is no folder {gone}" in sentence and "save_to_disk" in sentence, sentence


def test_a_wrong_column_or_split_names_what_there_is(cotrain_home: Path, saved: Path):
    layout = Layout.from_env().ensure()

    def error(**data) -> str:
        with pytest.raises(DataSourceError) as caught:
            prepare_dataset(validate_config({"data": {"dataset": f"hf:{saved}", **data}}).data, layout)
        message = str(caught.value)
        assert "\n" not in message
        return message

    message = error()  # the default column, "text", is not there
    assert message.startswith('data.text_column = "text": ') and '"path", "content", "size"' in message, message
    assert 'its text columns are "path", "content"' in message, message
    message = error(text_column="size")
    assert "holds Value('int64')" in message and "not text" in message, message
    message = error(text_column="content", split="validation")
    assert message.startswith('data.split = "validation": ') and '"train", "test"' in message, message


def test_the_forms_of_hf_datasets_in_a_config():
    for good in ("hf:wikitext", "hf:Salesforce/wikitext:wikitext-2-raw-v1", "hf:/data/raw/wiki", "hf:./wiki",
                 "hf:../wiki", "hf:~/wiki"):
        assert validate_config({"data": {"dataset": good}}).data.dataset == good
    for bad in ("hf:", "hf:a/b/c", "hf:wiki:", "hf:wiki/", "huggingface:wiki", "hf:wiki corpus", "hf:-x"):
        with pytest.raises(ConfigError, match="data.dataset"):
            validate_config({"data": {"dataset": bad}})
    # the library's builders would read the folder the run starts in (COTRAIN_HOME on a server)
    for builder in ("hf:json", "hf:text", "hf:parquet", "hf:csv", "hf:arrow"):
        with pytest.raises(ConfigError, match="builder of the datasets library"):
            validate_config({"data": {"dataset": builder}})
    with pytest.raises(ConfigError, match="choose one source"):
        validate_config({"data": {"dataset": "hf:wikitext", "data_path": "/data"}})


def test_a_name_that_is_also_a_local_folder_is_not_read_from_there(cotrain_home: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """`load_dataset("logs")` would read ./logs as data files: started in COTRAIN_HOME, as a server's
    runs are, `hf:logs` must not train on the platform's own logs."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "events.jsonl").write_text('{"text": "a secret"}\n' * 10)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataSourceError, match='"logs" is also a file or folder where this run starts'):
        prepare_dataset(validate_config({"data": {"dataset": "hf:logs"}}).data, Layout.from_env().ensure())


def test_text_column_also_names_the_field_of_jsonl_files(cotrain_home: Path, tmp_path: Path, rows: list[dict]):
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    layout = Layout.from_env().ensure()
    with pytest.raises(DataSourceError, match=r'need a "text" field .*set data.text_column'):
        prepare_dataset(validate_config({"data": {"data_path": str(corpus), "vocab_size": 300}}).data, layout)
    data = validate_config({"data": {"data_path": str(corpus), "vocab_size": 300, "text_column": "content"}}).data
    assert prepare_dataset(data, layout).meta["documents"] == len(rows)
