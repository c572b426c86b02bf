"""The Users page's data and actions, through `cotrain.server.user_service` (the same rules as
`/api/v1/users`). Every action re-reads who the browser's token belongs to and checks the
permission table again, so an admin demoted since the page opened cannot act on it, and is
written to the audit log with the same action names as the API's. Blocking: DB."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cotrain.server import user_service
from cotrain.server.errors import ServiceError
from cotrain.server.permissions import ASSIGNABLE_ROLES, Action, PermissionDenied, Role, require
from cotrain.ui import format as fmt
from cotrain.ui import prefs
from cotrain.ui.context import platform
from cotrain.ui.i18n import t

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

LIMIT = 500  # the newest users shown; filters narrow the rest
STATUS_COLORS = {"active": "positive", "banned": "negative", "revoked": "grey-6"}
KINDS: dict[str, user_service.Kind] = {"wallet": "wallet", "token": "token"}  # the page's filter values


@dataclass(frozen=True)
class Outcome:
    view: user_service.UserView | None  # None: refused, and `error` says why (the service's sentence)
    error: str


def status_of(view: user_service.UserView) -> str:
    if view.revoked:
        return "banned" if view.kind == "wallet" else "revoked"
    return "active"


def short(address: str) -> str:
    """0x1234abcd…9876fedc: enough to tell wallets apart in a table."""
    return address if len(address) <= 22 else f"{address[:10]}…{address[-8:]}"


def role_options() -> list[dict[str, str]]:
    return [{"label": t(f"users.role.{r.value}"), "value": r.value} for r in ASSIGNABLE_ROLES]


def row_of(view: user_service.UserView, me: int | None) -> dict[str, Any]:
    status = status_of(view)
    return {
        "ref": view.ref, "id": view.id, "kind": view.kind, "kind_label": t(f"users.kind.{view.kind}"),
        "label": short(view.address) if view.address else view.name,
        "detail": view.ref if view.kind == "token" else "",
        "role": view.role.value, "status": status, "status_label": t(f"users.status.{status}"),
        "status_color": STATUS_COLORS[status], "created": fmt.age(view.created_at),
        "last_login": fmt.age(view.last_login_at) if view.last_login_at else t("common.none"),
        "me": view.id == me,
    }


def load(role: str | None, kind: str | None) -> tuple[list[user_service.UserView], int]:
    return platform().users.list(Role(role) if role else None, KINDS.get(kind or ""), LIMIT, 0)


def rows_of(views: list[user_service.UserView], me: int | None) -> list[dict[str, Any]]:
    """Table rows (on the page's loop: the strings are in the page's language)."""
    return [row_of(v, me) for v in views]


def _record(actor: Actor | None, action: str, target: str, outcome: str, client_ip: str,
            detail: dict[str, Any]) -> None:
    """The audit entry of a change made here (the API's audit middleware never sees the UI's calls)."""
    from cotrain.ui import audit_data

    audit_data.record(actor, action, target, outcome, client_ip, detail)


def _change(token: str | None, action: str, ref: str, client_ip: str, detail: dict[str, Any],
            change: Callable[[], tuple[user_service.UserView, dict[str, Any]]]) -> Outcome:
    """Re-check that the browser's token is still an admin's, make the change, and audit it either way."""
    actor = prefs.actor_for(token)
    try:
        require(actor, Action.USERS_WRITE)
    except PermissionDenied as exc:
        _record(actor, action, ref, "refused", client_ip, {**detail, "reason": str(exc)})
        return Outcome(None, str(exc))
    try:
        view, done = change()
    except ServiceError as exc:
        _record(actor, action, ref, "failed", client_ip, {**detail, "reason": str(exc)})
        return Outcome(None, str(exc))
    _record(actor, action, view.ref, "ok", client_ip, {**detail, **done})
    return Outcome(view, "")


def set_role(token: str | None, ref: str, role: str, client_ip: str = "") -> Outcome:
    def change() -> tuple[user_service.UserView, dict[str, Any]]:
        view, before = platform().users.set_role(ref, role)
        return view, {"previousRole": before.value}

    return _change(token, "user.role_set", ref, client_ip, {"role": role}, change)


def revoke(token: str | None, ref: str, ban: bool | None, client_ip: str = "") -> Outcome:
    def change() -> tuple[user_service.UserView, dict[str, Any]]:
        view = platform().users.revoke(ref, ban)
        return view, {"revoked": view.revoked}

    return _change(token, "user.revoke", ref, client_ip, {"ban": ban}, change)


def done_message(view: user_service.UserView, action: str, ban: bool | None = None) -> str:
    """What the page says after a change (on the page's loop, in its language)."""
    who = short(view.ref) if view.kind == "wallet" else f"{view.name} ({view.ref})"
    if action == "role":
        return t("users.role_set", user=who, role=t(f"users.role.{view.role.value}"))
    if ban is False:
        return t("users.unbanned", user=who)
    return t("users.banned" if ban else "users.revoked", user=who)
