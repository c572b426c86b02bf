"""Where raw text comes from: local files (.txt, .jsonl, .parquet, or a folder of them), or the
built-in corpus every machine has — the Python standard library's own `.py` sources."""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

RAW_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".py")


class DataSourceError(ValueError):
    """The configured data cannot be found or read; the message says what to do."""


@dataclass(frozen=True)
class RawSource:
    """The files of one corpus, in a fixed order, and a hash of their content."""

    name: str
    files: tuple[Path, ...]

    def content_hash(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for path in self.files:
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            digest.update(b"\1")
        return digest.hexdigest()

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def stdlib_source(max_bytes: int | None = None) -> RawSource:
    """The standard library's `.py` files (no tests, no site-packages), sorted by path, taken in
    that order until `max_bytes` is reached, so a given Python version always yields the same
    corpus."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip_parts = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo"}
    files: list[Path] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if skip_parts.intersection(path.relative_to(root).parts):
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if size == 0:
            continue
        files.append(path)
        total += size
        if max_bytes is not None and total >= max_bytes:
            break
    if not files:
        raise DataSourceError(f"found no Python sources under {root}; set data.data_path to local text files")
    return RawSource(name="stdlib", files=tuple(files))


def file_source(data_path: str) -> RawSource:
    path = Path(data_path).expanduser()
    if not path.exists():
        raise DataSourceError(
            f"data.data_path {data_path!r} does not exist; point it at a .txt/.jsonl/.parquet file or a "
            'folder of them, or use data.dataset = "stdlib"'
        )
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in RAW_SUFFIXES)
    if not files:
        raise DataSourceError(
            f"no .txt, .jsonl or .parquet files in {path}; put raw text there or use data.dataset = \"stdlib\""
        )
    unsupported = [p for p in files if p.suffix not in RAW_SUFFIXES]
    if unsupported:
        raise DataSourceError(f"{unsupported[0]}: unsupported file type; use .txt, .jsonl or .parquet")
    return RawSource(name=path.stem, files=tuple(files))
