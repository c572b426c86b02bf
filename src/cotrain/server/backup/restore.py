"""`cotrain restore DIR`: into this COTRAIN_HOME and DATABASE_URL. Everything is checked before
anything is written (the manifest's paths, every file's sha256, the database's Alembic revisions, what
would be overwritten); then the session files, the ledger key and last the database are put in place,
each atomically, and the database is migrated to this CoTrain's head."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from cotrain.db import known_revisions
from cotrain.server.backup import database, files
from cotrain.server.backup.manifest import (
    FILES_DIR,
    BackupError,
    Entry,
    LedgerKeyPart,
    Manifest,
    read_manifest,
    sha256_file,
    verify_entries,
)

SHOWN_CONFLICTS = 3


@dataclass
class RestoreReport:
    manifest: Manifest
    notes: list[str] = field(default_factory=list)


@dataclass
class KeyPlan:
    """Where the backup's ledger key goes (None: nothing to write) and what to tell the operator."""

    target: Path | None
    note: str


def check_revisions(manifest: Manifest) -> None:
    unknown = sorted(set(manifest.alembic_revisions) - known_revisions())
    if unknown:
        raise BackupError(f"The backup's database is at revision {', '.join(unknown)}, which this CoTrain does not "
                          f"know: it was taken with CoTrain {manifest.platform_version}; install that version or "
                          "newer, then restore.")


def check_target_database(manifest: Manifest, url: str, force: bool) -> None:
    kind = database.kind_of(url)
    if kind != manifest.database.kind:
        raise BackupError(f"The backup holds a {manifest.database.kind} database but this platform's is {kind}; "
                          + ("unset DATABASE_URL to restore into COTRAIN_HOME's SQLite file." if kind != "sqlite"
                             else "set DATABASE_URL to the PostgreSQL database to restore into."))
    if kind == "sqlite" and not database.sqlite_path(url).exists():
        return
    engine = database.open_engine(url)
    try:
        full = database.has_data(engine)
    except OperationalError as exc:
        raise BackupError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL and "
                          "that the database exists.") from None
    finally:
        engine.dispose()
    if full and not force:
        where = database.sqlite_path(url) if kind == "sqlite" else "DATABASE_URL"
        raise BackupError(f"The database at {where} already holds data; stop the server and add --force to replace "
                          "it with the backup's.")


def plan_key(part: LedgerKeyPart | None, directory: Path, force: bool) -> KeyPlan:
    from cotrain.chain.keys import KeyConfigError, key_settings, ledger_key_path, load_ledger_key

    if part is None:
        return KeyPlan(None, "the backup holds no ledger key (nothing had been signed)")
    try:
        env_key = key_settings().ledger_key
        current = str(load_ledger_key(create=False).public_key()) if env_key is not None else None
    except KeyConfigError as exc:
        raise BackupError(str(exc)) from None
    if env_key is not None:
        if current != part.public_key:
            raise BackupError(f"COTRAIN_LEDGER_KEY is set to another key than the one that signed this backup's "
                              f"ledger; set it to the key in {directory / part.path} (or unset it), then restore.")
        return KeyPlan(None, "ledger key: COTRAIN_LEDGER_KEY already holds the backup's key")
    target = ledger_key_path()
    if target.exists() and sha256_file(target)[1] != part.sha256 and not force:
        raise BackupError(f"{target} holds another ledger key; move it away or add --force to replace it with the "
                          "backup's (the ledger being restored was signed by the backup's).")
    return KeyPlan(target, f"ledger key restored to {target} (mode 600)")


def plan_files(manifest: Manifest, home: Path, force: bool) -> list[Entry]:
    """The copied session files to write (those not already there with the same bytes)."""
    if not manifest.session_files.copied:
        return []
    todo, conflicts = [], []
    for entry in manifest.session_files.files:
        target = home / entry.path
        if target.is_dir() and not target.is_symlink():
            raise BackupError(f"{target} is a directory where the backup has a file; move it away, then restore.")
        if target.is_file():
            if sha256_file(target)[1] == entry.sha256:
                continue
            conflicts.append(str(target))
        todo.append(entry)
    if conflicts and not force:
        shown = ", ".join(conflicts[:SHOWN_CONFLICTS]) + (" ..." if len(conflicts) > SHOWN_CONFLICTS else "")
        raise BackupError(f"{len(conflicts)} session file(s) in {home} differ from the backup's ({shown}); add "
                          "--force to replace them.")
    return todo


def write_key(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = target.with_name(f".{target.name}.restoring")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    os.replace(temp, target)


def rebase_paths(url: str, old_home: str, new_home: Path) -> int:
    """Model versions record their absolute path; restored into another COTRAIN_HOME they point into the
    new one (only paths under the old home: a remote worker's are its own). Returns the rows changed."""
    from cotrain.db import open_database
    from cotrain.server.orm import ModelVersion

    old, new = old_home.rstrip("/") + "/", str(new_home).rstrip("/") + "/"
    if old == new:
        return 0
    engine, factory = open_database(url, migrate=False)
    try:
        with factory.begin() as db:
            rows = db.query(ModelVersion.id, ModelVersion.path).filter(ModelVersion.path.startswith(old)).all()
            for row_id, path in rows:
                db.execute(update(ModelVersion).where(ModelVersion.id == row_id).values(path=new + path[len(old):]))
            return len(rows)
    finally:
        engine.dispose()


def restore_backup(directory: Path, home: Path, url: str, *, force: bool = False,
                   progress: files.Progress = lambda _n: None) -> RestoreReport:
    """Restore the backup in `directory` into COTRAIN_HOME `home` and the database at `url`."""
    from cotrain.db import open_database

    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise BackupError(f"{directory} is not a directory; give the directory `cotrain backup` wrote.")
    manifest = read_manifest(directory)
    check_revisions(manifest)
    verify_entries(directory, manifest.backup_files())
    check_target_database(manifest, url, force)
    key = plan_key(manifest.ledger_key, directory, force)
    todo = plan_files(manifest, home, force)

    for entry in todo:
        files.place(directory / FILES_DIR / entry.path, home / entry.path)
        progress(entry.size)
    if key.target is not None and manifest.ledger_key is not None:
        write_key(directory / manifest.ledger_key.path, key.target)
    dump = directory / manifest.database.path
    if manifest.database.kind == "sqlite":
        database.restore_sqlite(dump, database.sqlite_path(url))
    else:
        database.restore_postgres(dump, url)
    engine, _ = open_database(url)  # migrated to this CoTrain's head
    engine.dispose()
    moved = rebase_paths(url, manifest.source_home, home)

    notes = [f"database ({manifest.database.kind}) from {manifest.created_at}, migrated to this CoTrain's head",
             key.note]
    if manifest.session_files.copied:
        notes.append(f"{len(todo)} session files written to {home} "
                     f"({len(manifest.session_files.files) - len(todo)} already there)")
    else:
        missing = [e for e in manifest.session_files.files if not (home / e.path).is_file()]
        notes.append(f"the backup indexed {len(manifest.session_files.files)} session files without copying them; "
                     f"{len(missing)} are not under {home}" + (f" (e.g. {missing[0].path}): restore them from "
                                                                "your storage's snapshots" if missing else ""))
    if moved:
        notes.append(f"{moved} model version path(s) moved from {manifest.source_home} to {home}")
    return RestoreReport(manifest, notes)
