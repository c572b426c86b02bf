"""`cotrain backup DIR` and `cotrain restore DIR`, for an operator on the server's machine (or in its
container): they read COTRAIN_HOME and DATABASE_URL like the server. A progress bar over the session
files' bytes shows when stdout is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from cotrain.cli.errors import UserError, friendly_errors


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over `total` bytes on a terminal; elsewhere a callback that does nothing."""
    if not sys.stdout.isatty() or total <= 0:
        yield lambda _n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _target() -> tuple[Path, str]:
    from cotrain.db import default_database_url
    from cotrain.paths import cotrain_home

    home = cotrain_home()
    return home, default_database_url(home)


def _guarded(fn: Callable[[], None]) -> None:
    from sqlalchemy.exc import OperationalError

    from cotrain.server.backup import BackupError

    try:
        fn()
    except BackupError as exc:
        raise UserError(str(exc)) from None
    except OperationalError as exc:
        raise UserError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL and "
                        "COTRAIN_HOME.") from None


def register(app: typer.Typer) -> None:
    @app.command("backup")
    @friendly_errors
    def backup(
        directory: Path = typer.Argument(..., help="Where to write the backup (created; must be empty)."),
        force: bool = typer.Option(False, "--force", help="Replace the backup already in DIR."),
        with_files: bool = typer.Option(None, "--with-files/--without-files", show_default=False,
                                        help="Copy the session files (checkpoints, models, logs) too, or only index "
                                             "them. Default: copy with SQLite, index only with PostgreSQL."),
    ) -> None:
        """Back up the database (consistent while the server runs), the ledger signing key and the session
        files' index (their copies too with --with-files) into DIR, with a checksummed manifest.json."""
        from cotrain.server.backup import take_backup
        from cotrain.server.backup.database import kind_of
        from cotrain.server.backup.files import total_bytes

        def run() -> None:
            home, url = _target()
            copying = with_files if with_files is not None else kind_of(url) == "sqlite"
            with _progress(total_bytes(home) if copying else 0, "session files") as advance:
                report = take_backup(directory, home, url, force=force, with_files=with_files, progress=advance)
            print(f"backup written to {report.directory}:")
            for note in report.notes:
                print(f"  - {note}")

        _guarded(run)

    @app.command("restore")
    @friendly_errors
    def restore(
        directory: Path = typer.Argument(..., help="The directory `cotrain backup` wrote."),
        force: bool = typer.Option(False, "--force", help="Replace a database that holds data, a different ledger "
                                                          "key file and session files that differ."),
    ) -> None:
        """Restore a backup into this COTRAIN_HOME and DATABASE_URL (stop the server first). Every file is checked
        against the manifest before anything is written; the database is migrated to this CoTrain's head."""
        from cotrain.server.backup import restore_backup
        from cotrain.server.backup.manifest import read_manifest

        def run() -> None:
            home, url = _target()
            resolved = directory.expanduser().resolve()
            total = 0
            if (resolved / "manifest.json").is_file():
                manifest = read_manifest(resolved)
                total = sum(e.size for e in manifest.session_files.files) if manifest.session_files.copied else 0
            with _progress(total, "session files") as advance:
                report = restore_backup(directory, home, url, force=force, progress=advance)
            print(f"restored {resolved} into {home}:")
            for note in report.notes:
                print(f"  - {note}")
            print("start the server (`cotrain up`) and check the ledger with `cotrain ledger verify`.")

        _guarded(run)
