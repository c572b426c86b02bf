"""`cotrain audit` (the newest entries, filtered) and `cotrain audit verify` (the hash chain). Like
`cotrain ledger verify`, it talks to the server's database directly (DATABASE_URL, else the SQLite
file under COTRAIN_HOME), for an operator on the server machine."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import typer

from cotrain.cli.errors import UserError, friendly_errors

audit_app = typer.Typer(help="The hash-chained audit log of requests and security events.",
                        invoke_without_command=True)

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _audit_log() -> Any:
    """The server's audit log, refusing to create a database: a typo in COTRAIN_HOME must not look
    like an empty, intact log."""
    from cotrain.db import NoDatabase, default_database_url, open_database
    from cotrain.paths import cotrain_home
    from cotrain.server.audit import AuditLog

    try:
        engine, _ = open_database(default_database_url(cotrain_home()), must_exist=True)
    except NoDatabase as exc:
        raise UserError(str(exc)) from None
    return AuditLog(engine)


def _guarded(fn: Any) -> Any:
    from sqlalchemy.exc import OperationalError

    try:
        return fn()
    except OperationalError as exc:
        raise UserError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL.") from None


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """"2025-06-01", "2025-06-01T12:00:00+08:00" (no zone: UTC), or a span back from now: "30m", "2h", "7d"."""
    if not value:
        return None
    relative = _RELATIVE.match(value.strip())
    if relative:
        return (now if now is not None else time.time()) - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UserError(f"--since {value!r} is neither a date/time (2025-06-01, 2025-06-01T12:00) nor a span back "
                        "from now (30m, 2h, 7d).") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _short(detail: dict[str, Any]) -> str:
    shown = {k: v for k, v in detail.items() if k not in ("method", "httpStatus")}
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    status = detail.get("httpStatus")
    return (f"[{status}] " if status else "") + (text if len(text) <= 120 else text[:119] + "…")


@audit_app.callback()
@friendly_errors
def audit_list(
    ctx: typer.Context,
    actor: str = typer.Option(None, "--actor", help='Only this actor: "token:1", "wallet:0x...", "anonymous".'),
    action: str = typer.Option(None, "--action", help='Only this action, e.g. "session.create"; "session.*" '
                                                       "for every session action."),
    target: str = typer.Option(None, "--target", help="Only this target: a session id, an address, a token id."),
    outcome: str = typer.Option(None, "--outcome", help="Only ok, refused or failed."),
    since: str = typer.Option(None, "--since", help="Only entries since a date/time (UTC unless given) or a span "
                                                     "back from now: 30m, 2h, 7d."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=100_000, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """Show the newest audit entries (filters combine)."""
    if ctx.invoked_subcommand is not None:
        return
    if outcome and outcome not in ("ok", "refused", "failed"):
        raise UserError(f"--outcome {outcome!r}: use ok, refused or failed.")
    from cotrain.server.audit import as_dict

    start = parse_since(since)

    def show() -> None:
        rows, total = _audit_log().query(actor=actor, action=action, target=target, outcome=outcome, since=start,
                                         limit=limit)
        if as_json:
            for row in rows:
                print(json.dumps(as_dict(row), ensure_ascii=False))
            return
        if not rows:
            print("no audit entries" + (" match these filters" if any((actor, action, target, outcome, since))
                                        else " yet"))
            return
        _table(rows, total)

    _guarded(show)


def _table(rows: list[Any], total: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit log: {len(rows)} of {total} entries, newest first")
    for name in ("id", "time (UTC)", "actor", "role", "action", "target", "outcome", "ip", "request id", "detail"):
        table.add_column(name, overflow="fold", no_wrap=name in ("id", "time (UTC)", "outcome"))
    colors = {"ok": "green", "refused": "yellow", "failed": "red"}
    for row in rows:
        when = datetime.fromtimestamp(row.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(row.id), when, row.actor, row.role, row.action, row.target or "—",
                      f"[{colors.get(row.outcome, 'white')}]{row.outcome}[/]", row.client_ip or "—",
                      row.request_id, _short(row.detail or {}))
    Console(width=max(160, Console().width)).print(table)


@audit_app.command("verify")
@friendly_errors
def audit_verify() -> None:
    """Check the hash chain of every entry, and the database against logs/system/audit.log. Exits 1
    naming the first entry that was changed, deleted or reordered."""

    def verify() -> None:
        report = _audit_log().verify()
        if report.ok:
            print(f"{report.entries} entries, chain intact" + (f" (head {report.head})" if report.entries else ""))
            return
        print(f"audit log TAMPERED: the first bad entry is {report.first_bad}: {report.problems[0]}", file=sys.stderr)
        for problem in report.problems[1:]:
            print(f"  - {problem}", file=sys.stderr)
        print(f"({report.entries} entries in the database)", file=sys.stderr)
        raise typer.Exit(1)

    _guarded(verify)


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.add_typer(audit_app, name="audit")
