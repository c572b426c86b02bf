"""`cotrain backup DIR`: the database, the ledger signing key and the session files' index, with a
manifest written last (a directory without `manifest.json` is an unfinished backup)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cotrain.db import revisions
from cotrain.server.backup import database, files
from cotrain.server.backup.manifest import (
    FILES_DIR,
    LEDGER_KEY_FILE,
    MANIFEST,
    PG_DUMP_FILE,
    SQLITE_FILE,
    BackupError,
    DatabasePart,
    KeySource,
    LedgerKeyPart,
    Manifest,
    SessionFiles,
    sha256_file,
)

WRITTEN = (MANIFEST, "database", "keys", FILES_DIR)  # what a backup writes in DIR (and --force replaces)


@dataclass
class BackupReport:
    directory: Path
    manifest: Manifest
    notes: list[str] = field(default_factory=list)


def platform_version() -> str:
    try:
        return version("cotrain")
    except PackageNotFoundError:
        return "unknown"


def prepare_directory(directory: Path, force: bool) -> Path:
    """DIR resolved and created; a non-empty one only with `force`, which replaces what a backup
    writes there (and nothing else)."""
    directory = directory.expanduser().resolve()
    if directory.exists() and not directory.is_dir():
        raise BackupError(f"{directory} is a file, not a directory; give a new or empty directory.")
    if directory.is_dir() and any(directory.iterdir()):
        if not force:
            raise BackupError(f"{directory} is not empty; give a new or empty directory, or --force to replace the "
                              "backup in it.")
        for name in WRITTEN:
            old = directory / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds the ledger key and the database
    return directory


def _entry_of(directory: Path, relative: str) -> tuple[int, str]:
    return sha256_file(directory / relative)


def backup_database(url: str, directory: Path) -> DatabasePart:
    kind = database.kind_of(url)
    (directory / "database").mkdir()
    relative = SQLITE_FILE if kind == "sqlite" else PG_DUMP_FILE
    if kind == "sqlite":
        database.backup_sqlite(database.sqlite_path(url), directory / relative)
    else:
        database.dump_postgres(url, directory / relative)
    size, digest = _entry_of(directory, relative)
    return DatabasePart(path=relative, size=size, sha256=digest, kind=kind)


def backup_ledger_key(directory: Path) -> tuple[LedgerKeyPart | None, str]:
    """The ledger key as a 0600 file in the backup (from its key file, or from COTRAIN_LEDGER_KEY), and a
    note saying where it came from. The key itself is never printed."""
    from cotrain.chain.keys import KeyConfigError, key_settings, ledger_key_path, load_ledger_key

    try:
        from_env = key_settings().ledger_key is not None
        path = ledger_key_path()
        if not from_env and not path.exists():
            return None, f"no ledger key yet ({path} does not exist): nothing has been signed"
        key = load_ledger_key(create=False)
    except KeyConfigError as exc:
        raise BackupError(f"The ledger key cannot be backed up: {exc}") from None
    target = directory / LEDGER_KEY_FILE
    target.parent.mkdir(mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(path.read_bytes() if not from_env else (key.hex() + "\n").encode())
    size, digest = _entry_of(directory, LEDGER_KEY_FILE)
    source: KeySource = "COTRAIN_LEDGER_KEY" if from_env else "file"
    where = "COTRAIN_LEDGER_KEY" if from_env else str(path)
    return (LedgerKeyPart(path=LEDGER_KEY_FILE, size=size, sha256=digest, source=source,
                          public_key=str(key.public_key())),
            f"ledger key from {where} (mode 600: keep this backup as secret as the key)")


def take_backup(directory: Path, home: Path, url: str, *, force: bool = False, with_files: bool | None = None,
                progress: files.Progress = lambda _n: None) -> BackupReport:
    """Back up the platform whose COTRAIN_HOME is `home` and database is `url` into `directory`.
    `with_files` None: copy the session files for a SQLite home, index them only for PostgreSQL."""
    kind = database.kind_of(url)
    if kind == "sqlite" and not database.sqlite_path(url).is_file():  # opening it would create an empty one
        raise BackupError(f"No database at {database.sqlite_path(url)}: set COTRAIN_HOME (or DATABASE_URL) to the "
                          "server's.")
    directory = prepare_directory(directory, force)
    engine = database.open_engine(url)
    try:
        at = revisions(engine)
    finally:
        engine.dispose()
    if not at:
        raise BackupError(f"The database at {'DATABASE_URL' if kind == 'postgresql' else url} holds no CoTrain "
                          "tables; set COTRAIN_HOME or DATABASE_URL to the server's.")
    db_part = backup_database(url, directory)
    key_part, key_note = backup_ledger_key(directory)
    copy = kind == "sqlite" if with_files is None else with_files
    entries = files.index_files(home, directory / FILES_DIR if copy else None, progress)
    manifest = Manifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), platform_version=platform_version(),
        alembic_revisions=at, source_home=str(home), database=db_part, ledger_key=key_part,
        session_files=SessionFiles(copied=copy, files=entries))
    manifest.write(directory)
    size = sum(e.size for e in entries)
    notes = [f"database ({kind}) at revisions {', '.join(at)}", key_note,
             f"{len(entries)} session files, {size / 1e6:.1f} MB, " + ("copied" if copy else "indexed only "
                                                                       "(--with-files copies them)")]
    return BackupReport(directory, manifest, notes)
