"""`data.dataset = "hf:..."` (forms in cotrain.config.hf_spec): a Hugging Face dataset from this
machine's datasets cache, or a folder written by `save_to_disk`, as the corpus.

Nothing is ever downloaded: every load runs with the `datasets` library's offline switch on
(HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), whatever the environment says, so a dataset that is not here
already is one sentence saying how to bring it (save_to_disk on a connected machine, or a copy of
the cache), not a hang on the network or a traceback.

The dataset is read where it lies (memory-mapped arrow files) and, while it is hashed for the
prepared data's key, bounded by `data.max_bytes` like the other corpora. The chosen documents are
then copied, as one `text` column, into the preparation's temporary folder, so tokenizing never
writes cache files beside the user's data (a data root may be read-only, a cache shared).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotrain.config.hf_spec import HFDataset, parse_hf
from cotrain.core.corpus import DataSourceError

if TYPE_CHECKING:
    import datasets

    from cotrain.config import DataConfig

_OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@contextmanager
def offline() -> Iterator[None]:
    """The `datasets` library (and the hub client under it) offline, and quiet, for the duration."""
    import datasets
    import huggingface_hub.constants as hub

    saved_env = {name: os.environ.get(name) for name in _OFFLINE_ENV}
    saved = (datasets.config.HF_HUB_OFFLINE, getattr(datasets.config, "HF_DATASETS_OFFLINE", None),
             hub.HF_HUB_OFFLINE, datasets.logging.get_verbosity())
    os.environ.update(dict.fromkeys(_OFFLINE_ENV, "1"))
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    datasets.logging.set_verbosity_error()  # "Using the latest cached version..." is not news here
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved[:3]
        datasets.logging.set_verbosity(saved[3])


class HFSource:
    """The corpus of an `hf:` dataset: its documents (bounded by max_bytes) and their content hash."""

    files: tuple[Path, ...] = ()  # no raw files: the documents come from arrow tables

    def __init__(self, data: DataConfig):
        assert data.dataset is not None
        self.spec = parse_hf(data.dataset)
        self.name = data.dataset
        self.column = data.text_column
        with offline():
            dataset = load(self.spec, data.split)
        check_column(self.spec, dataset, self.column)
        self.dataset = dataset.select_columns([self.column])
        self.rows, self.digest = _bounded(self.dataset, self.column, data.max_bytes)
        if self.rows == 0:
            raise DataSourceError(f'data.dataset = "{self.name}": split "{data.split}" has no rows; choose another '
                                  "data.split or another dataset")

    def content_hash(self) -> str:
        return self.digest

    def documents(self, cache_dir: Path) -> datasets.Dataset:
        """The chosen rows as one `text` column, written under `cache_dir` (the preparation's)."""
        docs = self.dataset.select(range(self.rows))
        if self.column != "text":
            docs = docs.rename_column(self.column, "text")
        cache_dir.mkdir(parents=True, exist_ok=True)
        return docs.map(_no_none, batched=True, cache_file_name=str(cache_dir / "hf-documents.arrow"),
                        desc=f"Reading {self.name}")


def _no_none(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
    return {"text": [text or "" for text in batch["text"]]}


def _bounded(dataset: datasets.Dataset, column: str, max_bytes: int | None) -> tuple[int, str]:
    """(rows within max_bytes, counting the one that crosses it; a hash of their texts), read in
    batches so a large dataset is never loaded whole into memory."""
    digest = hashlib.blake2b(digest_size=16)
    rows = total = 0
    for batch in dataset.iter(batch_size=1000):
        for text in batch[column]:
            raw = (text or "").encode()
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
            rows += 1
            total += len(raw)
            if max_bytes is not None and total >= max_bytes:
                return rows, digest.hexdigest()
    return rows, digest.hexdigest()


def check_column(spec: HFDataset, dataset: datasets.Dataset, column: str) -> None:
    """The text column exists and holds strings; otherwise a sentence naming the columns there are."""
    from datasets import Value

    names = dataset.column_names
    texts = [name for name in names if isinstance(dataset.features.get(name), Value)
             and dataset.features[name].dtype in ("string", "large_string")]
    hint = f"its text columns are {_listed(texts)}" if texts else "it has no text column"
    if column not in names:
        raise DataSourceError(f'data.text_column = "{column}": the dataset {spec.shown} has no such column; its '
                              f"columns are {_listed(names)} ({hint}): set data.text_column to the one holding "
                              "the text.")
    if column not in texts:
        raise DataSourceError(f'data.text_column = "{column}": that column of {spec.shown} holds '
                              f"{dataset.features[column]}, not text; {hint}: set data.text_column to one of them.")


def _listed(names: list[str]) -> str:
    return ", ".join(f'"{name}"' for name in names) or "(none)"


# --- loading ------------------------------------------------------------------------------------


def load(spec: HFDataset, split: str) -> datasets.Dataset:
    """The split of the dataset `spec` names (call inside `offline()`)."""
    return _from_disk(spec, split) if spec.path is not None else _from_cache(spec, split)


def _from_disk(spec: HFDataset, split: str) -> datasets.Dataset:
    import datasets

    assert spec.path is not None
    folder = Path(spec.path).expanduser()
    shown = str(folder) if str(folder) == spec.path else f"{spec.path} ({folder.absolute()})"
    if not folder.is_dir():
        raise DataSourceError(
            f'data.dataset = "{spec.spec}": there is no folder {shown}; on a machine with the data, write one with '
            f'datasets.load_dataset(...).save_to_disk("FOLDER"), copy FOLDER here and name it, or name a dataset of '
            f"this machine's Hugging Face cache with hf:NAME."
        )
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # the library says "neither a Dataset nor a DatasetDict directory", or worse
        raise DataSourceError(
            f'data.dataset = "{spec.spec}": {shown} is not a folder written by save_to_disk ({_reason(exc)}); write '
            f'it with datasets.load_dataset(...).save_to_disk("FOLDER"), or use data.data_path for raw files.'
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return _pick(spec, loaded, split)
    # one Dataset has no split names: the split's slice, if any, applies to it
    names = [part.split("[", 1)[0].strip() for part in split.split("+")]
    return _pick(spec, datasets.DatasetDict(dict.fromkeys(names, loaded)), split)


def _pick(spec: HFDataset, splits: datasets.DatasetDict, split: str) -> datasets.Dataset:
    """`split` ("train", "train[:10%]", "train+test") of a DatasetDict read from disk."""
    import datasets

    try:
        instruction = datasets.ReadInstruction.from_spec(split)
    except (ValueError, AssertionError):
        raise DataSourceError(f'data.split = "{split}" is not a split: name one of {_listed(list(splits))}, '
                              'optionally sliced, e.g. "train[:10%]".') from None
    try:
        parts = instruction.to_absolute({name: len(rows) for name, rows in splits.items()})
    except (ValueError, KeyError):
        raise DataSourceError(f'data.split = "{split}": the dataset {spec.shown} has the splits '
                              f"{_listed(list(splits))}: set data.split to one of them.") from None
    chosen = [splits[part.splitname].select(range(part.from_, part.to)) for part in parts]
    return datasets.concatenate_datasets(chosen) if len(chosen) > 1 else chosen[0]


def cache_root() -> Path:
    """The datasets cache this process reads (HF_DATASETS_CACHE, else HF_HOME/datasets)."""
    import datasets

    return Path(str(datasets.config.HF_DATASETS_CACHE)).expanduser()


def cached_folder(name: str) -> str:
    """The folder of the datasets cache that holds `name` ("owner/name" -> "owner___name")."""
    from datasets.naming import camelcase_to_snakecase

    *owner, last = name.split("/")
    return "___".join([*owner, camelcase_to_snakecase(last)])


def _from_cache(spec: HFDataset, split: str) -> datasets.Dataset:
    import datasets

    assert spec.name is not None
    name = spec.name
    if os.path.lexists(name):
        # the library would read that local folder (COTRAIN_HOME/... for a server's run) instead of the cache
        raise DataSourceError(
            f'data.dataset = "{spec.spec}": "{name}" is also a file or folder where this run starts ({Path.cwd()}), '
            f"which the datasets library would read instead of its cache; to read that folder, write it with "
            f'save_to_disk and name it as a path, "hf:./{name}".'
        )
    cache = cache_root()
    root = cache / cached_folder(name)
    configs = sorted(p.name for p in root.glob("*") if p.is_dir() and any(p.glob("*/*/dataset_info.json")))
    if not configs:
        raise DataSourceError(_missing(spec, cache))
    if spec.config is not None and not any(c == spec.config or c.startswith(spec.config + "-") for c in configs):
        raise DataSourceError(
            f'data.dataset = "{spec.spec}": the Hugging Face cache ({cache}) holds {name} in the configs '
            f'{_listed(configs)} but not "{spec.config}": name one of them (hf:{name}:{configs[0]}), or bring that '
            f"config: {_bring(spec, cache)}."
        )
    if spec.config is None and len(configs) > 1:
        raise DataSourceError(
            f'data.dataset = "{spec.spec}": the Hugging Face cache ({cache}) holds several configs of {name} '
            f"({_listed(configs)}): name one, e.g. hf:{name}:{configs[0]}."
        )
    try:
        return datasets.load_dataset(name, spec.config, split=split)
    except Exception as exc:
        if "split" in str(exc).lower():
            available = _cached_splits(root / (spec.config or configs[0]))
            raise DataSourceError(
                f'data.split = "{split}": the cached dataset {spec.shown} has the splits {_listed(available)}: set '
                f'data.split to one of them (a slice like "train[:10%]" works too).'
            ) from None
        raise DataSourceError(
            f'data.dataset = "{spec.spec}": the datasets library could not read {spec.shown} from the cache '
            f"{cache} ({_reason(exc)}); bring a fresh copy: {_bring(spec, cache)}."
        ) from None


def _cached_splits(config_dir: Path) -> list[str]:
    for info in sorted(config_dir.glob("*/*/dataset_info.json")):
        try:
            return sorted(json.loads(info.read_text()).get("splits") or {})
        except (OSError, ValueError):
            continue
    return []


def _bring(spec: HFDataset, cache: Path) -> str:
    args = f'"{spec.name}"' + (f', "{spec.config}"' if spec.config else "")
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.name or "dataset")
    return (f'on a machine with internet run datasets.load_dataset({args}).save_to_disk("{folder}"), copy that folder '
            f'into a data root here and set data.dataset = "hf:/path/to/{folder}", or copy the folder '
            f"{cached_folder(spec.name or '')} of that machine's datasets cache (~/.cache/huggingface/datasets by "
            f"default) into {cache}")


def _missing(spec: HFDataset, cache: Path) -> str:
    return (f'data.dataset = "{spec.spec}": the Hugging Face dataset {spec.shown} is not on this machine (looked in '
            f"the datasets cache {cache}, set by HF_DATASETS_CACHE or HF_HOME) and CoTrain never downloads "
            f"(HF_DATASETS_OFFLINE=1): {_bring(spec, cache)}.")


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
