"""`cotrain db upgrade | current`: the platform's database schema, for an operator or a deployment's
one-shot migration step (compose's `migrate` service, a Kubernetes Job), so that replicas starting
together never race each other's migrations. DATABASE_URL, else the SQLite file under COTRAIN_HOME."""

from __future__ import annotations

import sys
import time
from typing import Any

import typer

from cotrain.cli.errors import UserError, friendly_errors

db_app = typer.Typer(help="The platform's database schema (migrations).", no_args_is_help=True)


def _engine(create: bool) -> Any:
    from sqlalchemy.exc import OperationalError

    from cotrain.db import NoDatabase, default_database_url, open_database
    from cotrain.paths import cotrain_home

    home = cotrain_home()
    if create:
        home.mkdir(parents=True, exist_ok=True)  # where the embedded SQLite file goes
    try:
        return open_database(default_database_url(home), migrate=False, must_exist=not create)[0]
    except NoDatabase as exc:
        raise UserError(str(exc)) from None
    except OperationalError as exc:
        raise UserError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL.") from None


def _answered(fn: Any, *args: Any) -> Any:
    from sqlalchemy.exc import OperationalError

    try:
        return fn(*args)
    except OperationalError as exc:
        raise UserError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL.") from None


def _revisions_once_answering(engine: Any, wait_s: float) -> list[str]:
    """The database's revisions, asked again every second for up to `wait_s` while it does not answer yet: a
    deployment's migration step may start before its database container does (compose's `migrate`)."""
    from sqlalchemy.exc import OperationalError

    from cotrain.db import revisions

    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return list(revisions(engine))
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                within = f" within {wait_s:g} s" if wait_s else ""
                raise UserError(f"The database did not answer{within} ({exc.orig.__class__.__name__}); "
                                "check DATABASE_URL.") from None
            if not said:  # once: a line per attempt would bury the log
                where = engine.url.render_as_string(hide_password=True)
                print(f"waiting for the database at {where} (up to {wait_s:g} s)", file=sys.stderr, flush=True)
                said = True
            engine.dispose()
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


@db_app.command("upgrade")
@friendly_errors
def upgrade(
    wait: float = typer.Option(0, "--wait", min=0, metavar="SECONDS",
                               help="Wait up to SECONDS for the database to answer (it may still be starting)."),
) -> None:
    """Migrate the database to this CoTrain's schema (creating an embedded SQLite one if missing); a database
    already there is left as it is."""
    from cotrain.db import known_revisions, revisions, run_migrations

    engine = _engine(create=True)
    before = _revisions_once_answering(engine, wait)
    newer = sorted(set(before) - known_revisions())
    if newer:
        raise UserError(f"The database is at revision {', '.join(newer)}, which this CoTrain does not know: it was "
                        "migrated by a newer CoTrain; run that version (or restore a backup of this one's).")
    _answered(run_migrations, engine)
    after = _answered(revisions, engine)
    if before == after:
        print(f"database already at {', '.join(after)}")
    else:
        print(f"database migrated from {', '.join(before) or 'empty'} to {', '.join(after)}")


@db_app.command("current")
@friendly_errors
def current() -> None:
    """Print the database's revisions and whether `cotrain db upgrade` has work to do (exit 1 if so)."""
    from cotrain.db import head_revisions, revisions

    at, heads = _answered(revisions, _engine(create=False)), head_revisions()
    print(f"database at {', '.join(at) or 'no revision (empty)'}; this CoTrain's schema: {', '.join(heads)}")
    if at != heads:
        print("run `cotrain db upgrade`")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
