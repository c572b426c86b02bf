"""Preparing data once (tokenize, split, pack into memory-mapped shards) and reading batches.

`prepare_dataset` is idempotent: the prepared folder is named after a key derived from the raw
content hash and every setting that changes the tokens, each shard's header repeats that key,
and a second call with the same inputs finds the shards and does nothing. It builds in a temp
folder and renames it into place, so a crash never leaves half a dataset.

Layout (COTRAIN_HOME/datasets):
    processed/<key>/train-00000.bin ...  val-00000.bin ...  tokenizer/  meta.json
    splits/<key>.json                     which documents went to train and val
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cotrain.config import DataConfig
from cotrain.config.hf_spec import is_hf
from cotrain.core.corpus import DataSourceError, RawSource, file_source, stdlib_source
from cotrain.core.events import write_json_atomic
from cotrain.core.hf_datasets import HFSource
from cotrain.paths import Layout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMAT_VERSION = 1
MAGIC = b"COTRAINTOK\0\1"
HEADER_BYTES = 256
SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 per shard
_HEADER = struct.Struct("<12sIIQQ32s")  # magic, version, itemsize, tokens, vocab, key


# --- shards ------------------------------------------------------------------------------


def write_shard(path: Path, tokens: np.ndarray, key: str, vocab_size: int) -> None:
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, tokens.itemsize, len(tokens), vocab_size, key.encode()[:32])
    with path.open("wb") as fh:
        fh.write(header.ljust(HEADER_BYTES, b"\0"))
        fh.write(tokens.tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def read_shard_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        raw = fh.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise DataSourceError(f"{path} is not a CoTrain token shard (too short)")
    magic, version, itemsize, tokens, vocab, key = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataSourceError(f"{path} is not a CoTrain token shard; run `cotrain data prepare` on raw text")
    if version != FORMAT_VERSION:
        raise DataSourceError(
            f"{path} has shard format {version}, this CoTrain reads {FORMAT_VERSION}; prepare it again"
        )
    return {"itemsize": itemsize, "tokens": tokens, "vocab_size": vocab, "key": key.rstrip(b"\0").decode()}


def open_shard(path: Path) -> np.memmap:
    header = read_shard_header(path)
    dtype = np.uint16 if header["itemsize"] == 2 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(header["tokens"],))


# --- preparation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset on disk: its folder, key and what it holds."""

    root: Path
    key: str
    meta: dict[str, Any]

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def shards(self, split: str) -> list[Path]:
        return [self.root / name for name in self.meta["splits"][split]["shards"]]

    def load_tokenizer(self):  # -> PreTrainedTokenizerBase (transformers imported lazily)
        from cotrain.core.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_dir)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


def resolve_source(data: DataConfig) -> RawSource | HFSource:
    if data.data_path:
        return file_source(data.data_path)
    if data.dataset in (None, "stdlib"):
        return stdlib_source(data.max_bytes)
    if is_hf(data.dataset):
        return HFSource(data)  # a Hugging Face dataset already on this machine (cotrain.core.hf_datasets)
    raise DataSourceError(f'unknown data.dataset {data.dataset!r}; use "stdlib", "hf:NAME" or set data.data_path')


def find_prepared(data_path: str | None) -> PreparedData | None:
    """data.data_path may point straight at a prepared folder (with meta.json and shards)."""
    if not data_path:
        return None
    root = Path(data_path).expanduser()
    meta_path = root / "meta.json"
    if root.is_dir() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        prepared = PreparedData(root, meta["key"], meta)
        verify_prepared(prepared)
        return prepared
    return None


def verify_prepared(prepared: PreparedData) -> bool:
    for split in ("train", "val"):
        for shard in prepared.shards(split):
            if not shard.exists() or read_shard_header(shard)["key"] != prepared.key:
                return False
    return True


def dataset_key(source_hash: str, data: DataConfig, tokenizer_id: str, model_path: str | None) -> str:
    parts = {
        "format": FORMAT_VERSION,
        "source": source_hash,
        "max_bytes": data.max_bytes,
        "tokenizer": tokenizer_id,
        "vocab_size": data.vocab_size if tokenizer_id == "train" else None,
        "val_fraction": data.val_fraction,
        "model_path": model_path if tokenizer_id == "train" else None,
    }
    if data.text_column != "text":  # only then, so the keys of data prepared before it existed stay valid
        parts["text_column"] = data.text_column
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def prepare_dataset(data: DataConfig, layout: Layout, *, model_path: str | None = None, seed: int = 0) -> PreparedData:
    """Tokenize, split and pack the configured corpus; return the prepared folder (reusing it when
    it already exists)."""
    existing = find_prepared(data.data_path)
    if existing is not None:
        return existing
    source = resolve_source(data)
    tokenizer_spec = data.tokenizer
    if tokenizer_spec == "train" and model_path and (Path(model_path) / "tokenizer.json").exists():
        tokenizer_spec = model_path  # a pretrained model brings its own tokenizer
    tokenizer_id = "train" if tokenizer_spec == "train" else _path_fingerprint(Path(tokenizer_spec))
    key = dataset_key(source.content_hash(), data, tokenizer_id, model_path)
    root = layout.processed_data / key
    meta_path = root / "meta.json"
    if meta_path.exists():
        prepared = PreparedData(root, key, json.loads(meta_path.read_text()))
        if verify_prepared(prepared):
            return prepared
        shutil.rmtree(root)  # damaged: build again
    layout.processed_data.mkdir(parents=True, exist_ok=True)
    tmp = layout.processed_data / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = _build(source, data, tokenizer_spec, key, tmp, seed)
        write_json_atomic(tmp / "meta.json", meta)
        try:
            os.rename(tmp, root)
        except OSError:
            if not meta_path.exists():  # another process won the race: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    layout.splits.mkdir(parents=True, exist_ok=True)
    write_json_atomic(layout.splits / f"{key}.json", meta["splits_detail"])
    return PreparedData(root, key, json.loads(meta_path.read_text()))


def _path_fingerprint(path: Path) -> str:
    target = path / "tokenizer.json" if path.is_dir() else path
    if not target.exists():
        raise DataSourceError(
            f"data.tokenizer {str(path)!r}: no tokenizer.json there; use \"train\" or a local tokenizer directory"
        )
    return hashlib.blake2b(target.read_bytes(), digest_size=8).hexdigest()


def _load_documents(source: RawSource | HFSource, cache_dir: Path, column: str = "text"):
    """All documents as a `datasets.Dataset` with one `text` column (`column` of .jsonl/.parquet)."""
    import datasets

    if isinstance(source, HFSource):
        return source.documents(cache_dir)

    by_kind: dict[str, list[str]] = {}
    for path in source.files:
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix, "text")
        by_kind.setdefault(kind, []).append(str(path))
    parts = []
    for kind, files in by_kind.items():
        kwargs: dict[str, Any] = {"sample_by": "document"} if kind == "text" else {}
        ds = datasets.load_dataset(kind, data_files=files, split="train", cache_dir=str(cache_dir), **kwargs)
        wanted = "text" if kind == "text" else column
        if wanted not in ds.column_names:
            raise DataSourceError(f"{files[0]}: records need a \"{wanted}\" field (found {ds.column_names}); "
                                  "set data.text_column to the field holding the text")
        ds = ds.select_columns([wanted])
        parts.append(ds.rename_column(wanted, "text") if wanted != "text" else ds)
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _build(
    source: RawSource | HFSource, data: DataConfig, tokenizer_spec: str, key: str, out: Path, seed: int
) -> dict[str, Any]:
    from cotrain.core.tokenizer import eos_id, load_tokenizer, train_bpe

    docs = _load_documents(source, out / ".cache", data.text_column)
    if data.max_bytes is not None:
        docs = docs.select(range(_docs_within(docs, data.max_bytes)))
    if len(docs) < 2 and data.val_fraction > 0:
        raise DataSourceError("the corpus has fewer than 2 documents; add files or set data.val_fraction = 0")
    is_val = _val_assignment(len(docs), data.val_fraction, seed)
    train_ids = [i for i in range(len(docs)) if not is_val[i]]
    val_ids = [i for i in range(len(docs)) if is_val[i]]

    tokenizer: PreTrainedTokenizerBase
    if tokenizer_spec == "train":
        train_docs = docs.select(train_ids)
        batches = (train_docs[i : i + 1000]["text"] for i in range(0, len(train_docs), 1000))
        tokenizer = train_bpe(batches, data.vocab_size)
    else:
        tokenizer = load_tokenizer(tokenizer_spec)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    separator = eos_id(tokenizer)
    vocab = len(tokenizer)

    num_proc = data.num_proc or (os.cpu_count() or 1)
    if sum(len(t) for t in docs[: min(len(docs), 2000)]["text"]) < 4_000_000:
        num_proc = 1  # small corpora: starting workers costs more than it saves

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [row + [separator] for row in ids]}

    tokenized = docs.map(encode, batched=True, remove_columns=["text"], num_proc=num_proc, desc="Tokenizing")
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    splits: dict[str, Any] = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        splits[split] = _pack(tokenized, ids, split, out, key, vocab, dtype)
    shutil.rmtree(out / ".cache", ignore_errors=True)
    detail = {
        "key": key,
        "source": source.name,
        "val_fraction": data.val_fraction,
        "seed": seed,
        "train_documents": len(train_ids),
        "val_document_indices": val_ids,
        "files": [str(p) for p in source.files],
    }
    if isinstance(source, HFSource):
        detail["dataset"], detail["split"], detail["text_column"] = source.name, data.split, data.text_column
    return {
        "key": key,
        "format": FORMAT_VERSION,
        "source": source.name,
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "documents": len(docs),
        "splits": splits,
        "splits_detail": detail,
    }


def _docs_within(docs, max_bytes: int) -> int:
    """Documents up to the one that reaches max_bytes, read in batches (never the whole column)."""
    total = count = 0
    for batch in docs.iter(batch_size=1000):
        for text in batch["text"]:
            total += len(text.encode())
            count += 1
            if total >= max_bytes:
                return count
    return len(docs)


def _val_assignment(n: int, fraction: float, seed: int) -> list[bool]:
    """A fixed pseudo-random set of about `fraction` of the documents, at least one when > 0."""
    if fraction <= 0:
        return [False] * n
    rng = np.random.default_rng(seed)
    flags = rng.random(n) < fraction
    if not flags.any():
        flags[int(rng.integers(n))] = True
    if flags.all():
        flags[0] = False
    return flags.tolist()


def _pack(tokenized, ids: list[int], split: str, out: Path, key: str, vocab: int, dtype) -> dict[str, Any]:
    shards: list[str] = []
    buffer: list[np.ndarray] = []
    buffered = 0
    total = 0

    def flush() -> None:
        nonlocal buffer, buffered
        if not buffer:
            return
        name = f"{split}-{len(shards):05d}.bin"
        write_shard(out / name, np.concatenate(buffer).astype(dtype), key, vocab)
        shards.append(name)
        buffer, buffered = [], 0

    def rows() -> Iterator[Any]:
        if not ids:  # an empty split (val_fraction = 0): nothing to select
            return
        subset = tokenized.select(ids)
        for start in range(0, len(subset), 1000):
            yield from subset[start : start + 1000]["ids"]

    for row in rows():
        arr = np.asarray(row, dtype=np.int64)
        buffer.append(arr)
        buffered += len(arr)
        total += len(arr)
        if buffered >= SHARD_TOKENS:
            flush()
    flush()
    return {"shards": shards, "documents": len(ids), "tokens": total}
