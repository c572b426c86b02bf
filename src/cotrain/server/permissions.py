"""Who may do what: the one permission table of the platform, and the one read rule.

Every route and WebSocket action names exactly one `Action` (routes with `Depends(permit(...))`),
and `allowed(role, action)` decides it from `PERMISSIONS` alone. Field-level rules (a reward pool,
a priority above 0, a data path outside the data roots, going past a member quota) are actions of
the same table, checked by the services with `require(actor, action, why)`. Whether an actor may
see one session is `can_read_session`, used by REST, the WebSocket and the UI alike.

The README's permission table is generated from `PERMISSIONS` (`permission_table_markdown`), and
`tests/security/test_route_matrix.py` walks every OpenAPI route and WebSocket action per role.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import Depends, HTTPException, status

if TYPE_CHECKING:
    from cotrain.server.auth import Actor


class Role(StrEnum):
    ANONYMOUS = "anonymous"  # no token: public reads and sign-in only
    MEMBER = "member"  # every signed-in wallet and every plain API token, by default
    MAINTAINER = "maintainer"  # runs the platform's own sessions: priority, bigger quotas, any data path
    ADMIN = "admin"  # everything, including roles, tokens and the audit log

    @property
    def rank(self) -> int:
        return ROLE_ORDER.index(self)


ROLE_ORDER = (Role.ANONYMOUS, Role.MEMBER, Role.MAINTAINER, Role.ADMIN)
ASSIGNABLE_ROLES = (Role.MEMBER, Role.MAINTAINER, Role.ADMIN)


class Action(StrEnum):
    # reading (private sessions and what they produced follow `can_read_session` on top)
    STATUS_READ = "status.read"  # /health, /metrics
    SESSION_READ = "session.read"  # sessions, config, events, logs, checkpoints, participants, models, rewards
    LIVE_SUBSCRIBE = "live.subscribe"  # WebSocket subscribe / unsubscribe / ping
    SIGN_IN = "auth.sign_in"  # wallet nonce and verify, the UI's one-time link exchange
    # a member's own things
    SELF_READ = "self.read"  # who am I, my contributions and rewards
    SELF_SIGN_OUT = "self.sign_out"  # revoke the token in hand
    SESSION_CREATE = "session.create"
    SESSION_MANAGE = "session.manage"  # update, delete, start, cancel, retry, priority: owners (or admins)
    PEER_BIND = "peer.bind"  # bind a peer to a wallet: the peer's and the wallet's signatures are the proof
    # field-level rules, checked inside the services
    PRIORITY_RAISE = "session.priority_above_zero"
    DATA_ANY_PATH = "data.any_path"  # a dataPath outside COTRAIN_DATA_ROOTS
    QUOTA_EXCEED = "quota.exceed"  # past the member quotas (still within the hard limits of the schema)
    REWARD_POOL_SET = "reward_pool.set"  # maintainers up to COTRAIN_REWARD_POOL_MAX
    REWARD_POOL_UNLIMITED = "reward_pool.unlimited"
    ENGINE_WORKER_KEYS = "engine_config.worker_keys"  # issue 17: engine-config keys that act on the worker
    SLURM_OPTIONS = "session.slurm_options"  # issue 15: a session's slurmConfig (within what the executor allows)
    # the platform's own machinery
    DHT_OPERATE = "dht.operate"  # start the server's DHT node, connect it, submit hivemind tasks
    # administration
    READ_ALL_SESSIONS = "session.read_any"  # read other users' private sessions
    MANAGE_ALL_SESSIONS = "session.manage_any"  # change other users' sessions
    USERS_READ = "users.read"
    USERS_WRITE = "users.write"  # set roles, revoke a user's tokens
    TOKENS_WRITE = "tokens.write"  # create and revoke API tokens
    AUDIT_READ = "audit.read"


_READERS = {Role.ANONYMOUS, Role.MEMBER, Role.MAINTAINER, Role.ADMIN}
_MEMBERS = {Role.MEMBER, Role.MAINTAINER, Role.ADMIN}
_MAINTAINERS = {Role.MAINTAINER, Role.ADMIN}
_ADMINS = {Role.ADMIN}

PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.STATUS_READ: frozenset(_READERS),
    Action.SESSION_READ: frozenset(_READERS),
    Action.LIVE_SUBSCRIBE: frozenset(_READERS),
    Action.SIGN_IN: frozenset(_READERS),
    Action.SELF_READ: frozenset(_MEMBERS),
    Action.SELF_SIGN_OUT: frozenset(_MEMBERS),
    Action.SESSION_CREATE: frozenset(_MEMBERS),
    Action.SESSION_MANAGE: frozenset(_MEMBERS),
    Action.PEER_BIND: frozenset(_READERS),
    Action.PRIORITY_RAISE: frozenset(_MAINTAINERS),
    Action.DATA_ANY_PATH: frozenset(_MAINTAINERS),
    Action.QUOTA_EXCEED: frozenset(_MAINTAINERS),
    Action.REWARD_POOL_SET: frozenset(_MAINTAINERS),
    Action.REWARD_POOL_UNLIMITED: frozenset(_ADMINS),
    Action.ENGINE_WORKER_KEYS: frozenset(_MAINTAINERS),  # issue 17
    Action.SLURM_OPTIONS: frozenset(_MAINTAINERS),  # issue 15
    Action.DHT_OPERATE: frozenset(_MAINTAINERS),
    Action.READ_ALL_SESSIONS: frozenset(_MAINTAINERS),
    Action.MANAGE_ALL_SESSIONS: frozenset(_ADMINS),
    Action.USERS_READ: frozenset(_ADMINS),
    Action.USERS_WRITE: frozenset(_ADMINS),
    Action.TOKENS_WRITE: frozenset(_ADMINS),
    Action.AUDIT_READ: frozenset(_ADMINS),
}

# What each action means, for the README's table and for refusals.
DESCRIPTIONS: dict[Action, str] = {
    Action.STATUS_READ: "health and Prometheus metrics",
    Action.SESSION_READ: "read sessions and what they produced (private ones: owner, maintainers and admins only)",
    Action.LIVE_SUBSCRIBE: "follow sessions live on the WebSocket (same read rule)",
    Action.SIGN_IN: "sign in with a wallet",
    Action.SELF_READ: "see who you are, your contributions and rewards",
    Action.SELF_SIGN_OUT: "sign out (revoke your token)",
    Action.SESSION_CREATE: "create a session within the member quotas",
    Action.SESSION_MANAGE: "edit, start, cancel, retry, delete your own sessions",
    Action.PEER_BIND: "bind a peer to a wallet (the peer's key and the wallet both sign)",
    Action.PRIORITY_RAISE: "queue priority above 0",
    Action.DATA_ANY_PATH: "a dataPath outside COTRAIN_DATA_ROOTS",
    Action.QUOTA_EXCEED: "go past the member quotas",
    Action.REWARD_POOL_SET: "open or raise a reward pool (maintainers up to COTRAIN_REWARD_POOL_MAX)",
    Action.REWARD_POOL_UNLIMITED: "a reward pool of any size",
    Action.ENGINE_WORKER_KEYS: ("set engine-config keys that act on the worker (its listen addresses, the credited "
                                "wallet) or that the server does not vet"),
    Action.SLURM_OPTIONS: ("narrow a session's Slurm partition, account, QoS or time limit (`slurmConfig`, "
                           "within what COTRAIN_SLURM_* allow)"),
    Action.DHT_OPERATE: "operate the server's DHT node (start, connect, hivemind tasks)",
    Action.READ_ALL_SESSIONS: "read other users' private sessions",
    Action.MANAGE_ALL_SESSIONS: "change any user's sessions",
    Action.USERS_READ: "list users and their roles",
    Action.USERS_WRITE: "set roles, revoke a user's tokens",
    Action.TOKENS_WRITE: "create and revoke API tokens",
    Action.AUDIT_READ: "read and verify the audit log",
}


def role_of(actor: Actor | None) -> Role:
    return actor.role if actor is not None else Role.ANONYMOUS


def allowed(actor_or_role: Actor | Role | None, action: Action) -> bool:
    role = actor_or_role if isinstance(actor_or_role, Role) else role_of(actor_or_role)
    return role in PERMISSIONS[action]


def who_may(action: Action) -> str:
    """"maintainers and admins", for refusals that say who can."""
    roles = [r for r in ROLE_ORDER if r in PERMISSIONS[action] and r is not Role.ANONYMOUS]
    names = [f"{r.value}s" for r in roles]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


class PermissionDenied(Exception):
    """Raised by the services; the app answers 403 with the sentence (401 for anonymous callers)."""

    def __init__(self, action: Action, message: str, anonymous: bool = False):
        super().__init__(message)
        self.action = action
        self.anonymous = anonymous


def require(actor: Actor | None, action: Action, what: str | None = None) -> None:
    """Raise PermissionDenied unless `actor` may do `action`; `what` describes the attempt."""
    if allowed(actor, action):
        return
    if actor is None:
        raise PermissionDenied(action, "This needs a signed-in user: sign in with your wallet or send "
                                       "`Authorization: Bearer <token>`.", anonymous=True)
    what = what or DESCRIPTIONS[action]
    raise PermissionDenied(action, f"Your role ({actor.role.value}) may not {what}; only {who_may(action)} can.")


def can_read_session(actor: Actor | None, owner_id: int | None, public: bool) -> bool:
    """The one read rule: public sessions for everyone; private ones for their owner, maintainers and
    admins. Everyone else gets 404 everywhere (REST, WebSocket, UI, models, rewards)."""
    if public:
        return True
    if actor is None:
        return False
    return allowed(actor, Action.READ_ALL_SESSIONS) or (owner_id is not None and actor.token_id == owner_id)


def readable_sessions_clause(actor: Actor | None, owner_column: Any, public_column: Any) -> Any | None:
    """`can_read_session` as a SQL condition over a sessions table's columns, for listings; None
    when the actor may read every session."""
    from sqlalchemy import or_

    if allowed(actor, Action.READ_ALL_SESSIONS):
        return None
    if actor is None:
        return public_column.is_(True)
    return or_(public_column.is_(True), owner_column == actor.token_id)


def can_see_internals(actor: Actor | None, owner_id: int | None) -> bool:
    """Whether errors, logs, events and listings may show this session's file-system paths, host
    names and tracebacks: its owner and admins only; everyone else gets them redacted."""
    if actor is None:
        return False
    return allowed(actor, Action.MANAGE_ALL_SESSIONS) or (owner_id is not None and actor.token_id == owner_id)


def can_manage_session(actor: Actor | None, owner_id: int | None) -> bool:
    if actor is None or not allowed(actor, Action.SESSION_MANAGE):
        return False
    return allowed(actor, Action.MANAGE_ALL_SESSIONS) or (owner_id is not None and actor.token_id == owner_id)


# ---- the FastAPI side ----------------------------------------------------------------------------

def permit(action: Action) -> Callable[..., Any]:
    """A route dependency that refuses callers whose role may not do `action` (401 for anonymous,
    403 otherwise) and hands the route the actor. `.action` marks the route for the matrix test."""
    from cotrain.server.api.deps import optional_actor  # deps imports this module

    async def check(actor: Any = Depends(optional_actor)) -> Any:
        try:
            require(actor, action)
        except PermissionDenied as exc:
            code = status.HTTP_401_UNAUTHORIZED if exc.anonymous else status.HTTP_403_FORBIDDEN
            headers = {"WWW-Authenticate": "Bearer"} if exc.anonymous else None
            raise HTTPException(code, str(exc), headers=headers) from None
        return actor

    check.action = action  # type: ignore[attr-defined]  # a mark read by the permission matrix test
    check.__name__ = f"permit_{action.name.lower()}"
    return check


TABLE_BEGIN = "<!-- permission-table:begin (generated from cotrain/server/permissions.py) -->"
TABLE_END = "<!-- permission-table:end -->"


def with_permission_table(readme_text: str) -> str:
    """`readme_text` with the block between the markers replaced by the current table."""
    head, _, rest = readme_text.partition(TABLE_BEGIN)
    _, _, tail = rest.partition(TABLE_END)
    return f"{head}{TABLE_BEGIN}\n{permission_table_markdown()}\n{TABLE_END}{tail}"


def permission_table_markdown() -> str:
    """The README's permission table: one row per action, one column per role."""
    header = "| action | what it allows | " + " | ".join(r.value for r in ROLE_ORDER) + " |"
    rule = "|---|---|" + "---|" * len(ROLE_ORDER)
    rows = [header, rule]
    for action in Action:
        marks = " | ".join("✓" if r in PERMISSIONS[action] else "" for r in ROLE_ORDER)
        rows.append(f"| `{action.value}` | {DESCRIPTIONS[action]} | {marks} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m cotrain.server.permissions README.md
    import sys
    from pathlib import Path

    readme = Path(sys.argv[1])
    readme.write_text(with_permission_table(readme.read_text()))
