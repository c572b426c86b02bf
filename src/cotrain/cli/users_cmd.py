"""`cotrain users list | role | revoke`: the admin's user management, for an operator on the server
machine. Like `cotrain ledger`, it talks to the server's database directly (DATABASE_URL, else the
SQLite file under COTRAIN_HOME) through the same service as `/api/v1/users`; changes are written
to the audit log as the operator's ("cli:<login>")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from cotrain.cli.errors import UserError, friendly_errors

users_app = typer.Typer(help="Users (signed-in wallets and API tokens) and their roles.", no_args_is_help=True)

ROLES = "member, maintainer or admin"


def _factory() -> Any:
    """The server's database, refusing to create one: a typo in COTRAIN_HOME must not look like an
    empty platform whose roles were set."""
    from cotrain.db import NoDatabase, default_database_url, open_database
    from cotrain.paths import cotrain_home

    try:
        return open_database(default_database_url(cotrain_home()), must_exist=True)[1]
    except NoDatabase as exc:
        raise UserError(str(exc)) from None


def _checked(fn: Any, *args: Any) -> Any:
    """`fn(*args)` with the service's refusals as one-line errors."""
    from cotrain.server.errors import ServiceError

    try:
        return fn(*args)
    except ServiceError as exc:
        raise UserError(str(exc)) from None


def _run(fn: Any, *args: Any, audit: tuple[str, str, dict[str, Any]] | None = None) -> Any:
    """`fn(factory, *args)` on the server's database; with `audit` (action, target, detail) the
    change is written to the audit log, refused or not (the API's middleware never sees the CLI)."""
    from sqlalchemy.exc import OperationalError

    try:
        factory = _factory()
    except OperationalError as exc:
        raise UserError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL.") from None
    try:
        result = _checked(fn, factory, *args)
    except UserError as exc:
        if audit:
            _audit(factory, audit, "failed", {"reason": str(exc)})
        raise
    except OperationalError as exc:
        raise UserError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL.") from None
    if audit:
        _audit(factory, audit, "ok", _done(result))
    return result


def _done(result: Any) -> dict[str, Any]:
    """The audit detail of a change's result: the user's ref, and its previous role for a role change."""
    view, before = result if isinstance(result, tuple) else (result, None)
    done: dict[str, Any] = {"target": view.ref, "revoked": view.revoked}
    if before is not None:
        done["previousRole"] = before.value
    return done


def _audit(factory: Any, audit: tuple[str, str, dict[str, Any]], outcome: str, extra: dict[str, Any]) -> None:
    """One audit entry by the operator ("cli:<login>", role "system"): this command runs on the
    server machine with the database's own credentials, outside every role."""
    import getpass

    from cotrain.server.audit import SYSTEM, audit_log_for

    action, target, detail = audit
    target = extra.pop("target", target)
    try:
        login = getpass.getuser()
    except Exception:
        login = "unknown"
    audit_log_for(factory).record_safely(action, actor=f"cli:{login}", role=SYSTEM, target=target, outcome=outcome,
                                         detail={"via": "cli", **detail, **extra})


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "—"


def _status(view: Any) -> str:
    if view.revoked:
        return "banned" if view.kind == "wallet" else "revoked"
    return "active"


def _print(views: list[Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("user", "kind", "role", "status", "created", "last sign-in"):
        table.add_column(name, no_wrap=name != "user", overflow="fold")
    for v in views:
        user = v.ref if v.kind == "wallet" else f"{v.ref} ({v.name})"
        table.add_row(user, v.kind, v.role.value, _status(v), _when(v.created_at), _when(v.last_login_at))
    Console(width=160).print(table)


@users_app.command("list")
@friendly_errors
def users_list(
    role: str = typer.Option(None, "--role", "-r", help=f"Only this role: {ROLES}."),
    kind: str = typer.Option(None, "--kind", "-k", help="Only wallets (wallet) or only API tokens (token)."),
    limit: int = typer.Option(200, "--limit", min=1, max=10_000, help="At most this many rows (newest first)."),
) -> None:
    """Every user with its role, newest first."""
    from cotrain.server import user_service

    wanted = _checked(user_service.parse_role, role) if role else None
    if kind not in (None, "wallet", "token"):
        raise UserError(f"{kind!r} is not a kind of user; use wallet or token.")
    views, total = _run(user_service.list_users, wanted, kind, limit, 0)
    if not views:
        print("no users" + (" with that role" if role or kind else ""))
        return
    shown = f"{len(views)} of {total}" if total > len(views) else str(total)
    _print(views, f"Users ({shown})")


@users_app.command("role")
@friendly_errors
def users_role(
    user: str = typer.Argument(..., help="A wallet address (0x...) or an API token as token:ID."),
    role: str = typer.Argument(..., help=f"The new role: {ROLES}."),
) -> None:
    """Set a user's role. A wallet that never signed in gets it when it does (pre-assigned)."""
    from cotrain.server import user_service

    ref = _checked(user_service.parse_ref, user)
    wanted = _checked(user_service.parse_role, role)
    view, before = _run(user_service.set_role, ref, wanted, audit=("user.role_set", str(ref), {"role": wanted.value}))
    change = "unchanged" if before is view.role else f"{before.value} → {view.role.value}"
    print(f"{view.ref}: {change}")


@users_app.command("revoke")
@friendly_errors
def users_revoke(
    user: str = typer.Argument(..., help="A wallet address (0x...) or an API token as token:ID."),
    ban: bool = typer.Option(None, "--ban/--unban", help="Also refuse the wallet's sign-ins (--ban), or lift a "
                                                         "ban (--unban); without either the ban stays as it is."),
) -> None:
    """End every token the user holds now (a wallet can sign in again unless banned; an API token
    is revoked for good)."""
    from cotrain.server import user_service

    ref = _checked(user_service.parse_ref, user)
    view = _run(user_service.revoke, ref, ban, audit=("user.revoke", str(ref), {"ban": ban}))
    if view.kind == "token":
        print(f"{view.ref} ({view.name}): revoked")
        return
    print(f"{view.ref}: every token issued until now is revoked; {'banned' if view.revoked else 'may sign in again'}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.add_typer(users_app, name="users")
