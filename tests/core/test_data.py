"""Data preparation from local files and the built-in corpus; batches as a function of the step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cotrain.config import DataConfig
from cotrain.core.batches import BatchSchedule, TokenSamples
from cotrain.core.corpus import DataSourceError
from cotrain.core.data import open_shard, prepare_dataset, read_shard_header
from cotrain.paths import Layout

TEXT = "def add(a, b):\n    return a + b\n\n" * 50


def write_mixed_corpus(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT)
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"text": f"record {i}: " + TEXT[:200]}) for i in range(20)))
    pq.write_table(pa.table({"text": [f"parquet row {i} " + TEXT[:300] for i in range(20)]}), folder / "c.parquet")


def test_prepare_mixed_folder_is_idempotent(cotrain_home: Path, tmp_path: Path):
    raw = tmp_path / "raw"
    write_mixed_corpus(raw)
    layout = Layout.from_env().ensure()
    cfg = DataConfig(data_path=str(raw), vocab_size=300, val_fraction=0.1)
    first = prepare_dataset(cfg, layout)
    assert first.meta["documents"] == 41  # one .txt document + 20 jsonl records + 20 parquet rows
    train_shards = first.shards("train")
    assert train_shards and all(read_shard_header(s)["key"] == first.key for s in train_shards)
    assert first.meta["splits"]["val"]["documents"] >= 1
    assert (layout.splits / f"{first.key}.json").exists()
    tokens = open_shard(train_shards[0])
    assert tokens.max() < first.vocab_size
    tok = first.load_tokenizer()
    assert "return a + b" in tok.decode(tokens[:400].tolist())

    mtimes = {p: p.stat().st_mtime_ns for p in first.root.rglob("*") if p.is_file()}
    second = prepare_dataset(cfg, layout)
    assert second.key == first.key and second.root == first.root
    assert {p: p.stat().st_mtime_ns for p in first.root.rglob("*") if p.is_file()} == mtimes  # nothing rewritten

    # Changing the content changes the key: a new dataset, the old one untouched.
    (raw / "a.txt").write_text(TEXT + "# more\n")
    third = prepare_dataset(cfg, layout)
    assert third.key != first.key and first.root.exists()

    # data_path may name the prepared folder itself.
    direct = prepare_dataset(DataConfig(data_path=str(first.root)), layout)
    assert direct.key == first.key


def test_local_tokenizer_is_used(cotrain_home: Path, tmp_path: Path):
    raw = tmp_path / "raw"
    write_mixed_corpus(raw)
    layout = Layout.from_env().ensure()
    trained = prepare_dataset(DataConfig(data_path=str(raw), vocab_size=300), layout)
    tokenizer = str(trained.tokenizer_dir / "tokenizer.json")
    reuse = prepare_dataset(DataConfig(data_path=str(raw), tokenizer=tokenizer), layout)
    assert reuse.key != trained.key and reuse.vocab_size == trained.vocab_size
    assert (open_shard(reuse.shards("train")[0])[:50] == open_shard(trained.shards("train")[0])[:50]).all()


def test_missing_data_path_is_a_clear_error(cotrain_home: Path, tmp_path: Path):
    with pytest.raises(DataSourceError, match="does not exist"):
        prepare_dataset(DataConfig(data_path=str(tmp_path / "nope")), Layout.from_env().ensure())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSourceError, match="no .txt, .jsonl or .parquet"):
        prepare_dataset(DataConfig(data_path=str(empty)), Layout.from_env().ensure())


def test_cli_prepare_stdlib_twice(cotrain_home: Path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cotrain.cli", "data", "prepare", "--dataset", "stdlib", "--max-bytes", "200000",
           "--vocab-size", "400"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert first.returncode == 0, first.stderr
    assert "prepared" in first.stdout and "train" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert second.returncode == 0 and second.stdout.strip() == first.stdout.strip()
    assert "Tokenizing" not in second.stderr  # nothing done the second time


def test_batches_are_a_function_of_the_step_and_shard_exactly(cotrain_home: Path):
    prepared = prepare_dataset(DataConfig(dataset="stdlib", max_bytes=200000, vocab_size=400),
                               Layout.from_env().ensure())
    samples = TokenSamples(prepared.shards("train"), seq_length=32, causal=True)
    whole = BatchSchedule(len(samples), batch_size=8, seed=3)
    again = BatchSchedule(len(samples), batch_size=8, seed=3)
    steps = [0, 1, whole.plan.steps_per_epoch - 1, whole.plan.steps_per_epoch, 5 * whole.plan.steps_per_epoch + 2]
    for step in steps:
        assert torch.equal(whole.indices(step), again.indices(step))
        halves = [BatchSchedule(len(samples), 8, 3, i, 2).indices(step) for i in range(2)]
        assert torch.equal(torch.cat(halves), whole.indices(step))
    epoch0 = torch.cat([whole.indices(s) for s in range(whole.plan.steps_per_epoch)])
    assert len(set(epoch0.tolist())) == len(epoch0)  # no sample twice in an epoch
    batch = samples.get(whole.indices(0))
    assert batch.shape == (8, 33) and batch.dtype == torch.int64
