"""The backup's manifest (`manifest.json`): what a backup holds, each file's size and sha256.

A backup directory comes from the user and may have been edited by anyone who could reach it, so
restoring trusts nothing in it: every path the manifest names must be relative, free of `..`, and
stay inside the backup directory once symlinks are resolved (`data_roots.resolve`/`within`, the
platform's one rule for "inside"); a session file may only land in the folders a backup writes
(`SESSION_TREES`), never on the database, the keys or the tokens under COTRAIN_HOME; and every byte
is checked against its sha256 before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from cotrain.data_roots import resolve, within

MANIFEST = "manifest.json"
FILES_DIR = "files"  # session files are copied to DIR/files/<their path under COTRAIN_HOME>
SQLITE_FILE = "database/cotrain.db"
PG_DUMP_FILE = "database/cotrain.pgdump"
LEDGER_KEY_FILE = "keys/ledger.key"
# The folders under COTRAIN_HOME whose files a backup indexes (and copies with --with-files): what the runs
# made. Not datasets/ (inputs, re-creatable, often huge), models/temp/, nor the secrets at the top.
SESSION_TREES = ("models/checkpoints", "models/final", "logs", "configs/generated")
CHUNK = 1 << 20
DatabaseKind = Literal["sqlite", "postgresql"]
KeySource = Literal["file", "COTRAIN_LEDGER_KEY"]


class BackupError(Exception):
    """A backup cannot be taken or restored; the message is one sentence saying why and what to do."""


def safe_relative(value: str) -> str:
    """`value` as a relative POSIX path with no `..`, or ValueError (a hostile manifest)."""
    path = PurePosixPath(value)
    if not value or "\\" in value or "\0" in value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"the path {value!r} is not a plain relative path (absolute, '..' or empty)")
    return path.as_posix()


class Entry(BaseModel):
    """One file of the backup: its path (relative to the backup, or to COTRAIN_HOME for session files)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    size: int
    sha256: str

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return safe_relative(value)


class DatabasePart(Entry):
    kind: DatabaseKind


class LedgerKeyPart(Entry):
    source: KeySource
    public_key: str


class SessionFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    copied: bool
    files: list[Entry]

    @field_validator("files")
    @classmethod
    def _inside_trees(cls, files: list[Entry]) -> list[Entry]:
        for entry in files:
            if not any(entry.path.startswith(tree + "/") for tree in SESSION_TREES):
                raise ValueError(f"the session file {entry.path!r} is outside {', '.join(SESSION_TREES)}")
        return files


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["cotrain-backup"] = "cotrain-backup"
    format_version: Literal[1] = 1
    created_at: str
    platform_version: str
    alembic_revisions: list[str]
    source_home: str
    database: DatabasePart
    ledger_key: LedgerKeyPart | None
    session_files: SessionFiles

    @field_validator("database")
    @classmethod
    def _database_name(cls, part: DatabasePart) -> DatabasePart:
        expected = SQLITE_FILE if part.kind == "sqlite" else PG_DUMP_FILE
        if part.path != expected:
            raise ValueError(f"the database must be {expected!r}, not {part.path!r}")
        return part

    @field_validator("ledger_key")
    @classmethod
    def _key_name(cls, part: LedgerKeyPart | None) -> LedgerKeyPart | None:
        if part is not None and part.path != LEDGER_KEY_FILE:
            raise ValueError(f"the ledger key must be {LEDGER_KEY_FILE!r}, not {part.path!r}")
        return part

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(self.model_dump_json(indent=2) + "\n")

    def backup_files(self) -> list[Entry]:
        """Every file the backup directory must hold, with its path relative to the directory."""
        entries: list[Entry] = [self.database]
        if self.ledger_key is not None:
            entries.append(self.ledger_key)
        if self.session_files.copied:
            entries += [e.model_copy(update={"path": f"{FILES_DIR}/{e.path}"}) for e in self.session_files.files]
        return entries


def read_manifest(directory: Path) -> Manifest:
    """The manifest of the backup in `directory`, validated (paths included), or a BackupError."""
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupError(f"{directory} holds no {MANIFEST}: give the directory `cotrain backup` wrote.")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackupError(f"{path} is not readable JSON ({exc.__class__.__name__}); the backup is damaged.") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str((error.get("ctx") or {}).get("error") or error["msg"])
        raise BackupError(f"{path} is refused: {where}: {message}; the backup was not made by `cotrain backup` "
                          "or was edited, so nothing was restored.") from None


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of the file's bytes."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def inside(directory: Path, relative: str) -> Path:
    """`directory/relative` once symlinks are resolved, refusing a path that leaves `directory`."""
    root = resolve(directory)
    target = resolve(root / relative)
    if not within(target, [root]):
        raise BackupError(f"{relative} in the backup leads out of {directory} (a symlink?); the backup is refused.")
    return target


def verify_entries(directory: Path, entries: list[Entry]) -> None:
    """Every entry is a regular file inside `directory` with its recorded size and sha256, else a
    BackupError naming the first that is not."""
    for entry in entries:
        path = inside(directory, entry.path)
        if (directory / entry.path).is_symlink() or not path.is_file():
            raise BackupError(f"{entry.path} is missing from the backup in {directory} (or is not a plain file); "
                              "nothing was restored.")
        size, digest = sha256_file(path)
        if size != entry.size or digest != entry.sha256:
            what = "truncated or extended" if size != entry.size else "changed"
            raise BackupError(f"{entry.path} in {directory} was {what} since the backup was taken (its sha256 does "
                              "not match the manifest); nothing was restored.")
