"""The permission matrix, tried for real: every route of the OpenAPI and every WebSocket action, as
each role (anonymous, a wallet member with a fresh Aptos key, a maintainer, an admin), against a
running server. A route without a rule fails here, so none can ship without one.

Calls aim at ids that do not exist and send empty bodies, so an allowed call ends in 404/422
(nothing changes), while a refused one must end in the permission layer's 401/403 first.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from websockets.sync.client import connect as ws_connect

from cotrain.server.app import create_app
from cotrain.server.permissions import PERMISSIONS, Action, Role
from cotrain.server.ws import WS_ACTIONS
from tests.chain.wallets import Wallet
from tests.security.conftest import ADMIN_TOKEN, api_token, wallet_sign_in

PLACEHOLDERS = {"session_id": "nosuchsession", "task_id": "nosuchsession", "model_id": "999999",
                "token_id": "999999", "address": Wallet.create().address}
# Changes that prove themselves by a signature, so they need no token: wallet sign-in, and a binding
# of a peer that the wallet signed (a volunteer's `cotrain rewards bind` has no token).
SIGN_IN_ROUTES = {"POST /api/v1/auth/nonce", "POST /api/v1/auth/verify", "POST /api/v1/rewards/bindings",
                  "POST /api/v1/rewards/bindings/nonce"}
# Independent of the table in code: routes that must stay admin-only whatever PERMISSIONS says.
ADMIN_ONLY_PREFIXES = ("/api/v1/users", "/api/v1/audit", "/api/v1/auth/tokens")


def _action_of(route: APIRoute | APIWebSocketRoute) -> Action | None:
    """The Action of the route's `permit(...)` dependency, searched through its dependency tree."""
    found: list[Action] = []
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        action = getattr(dependant.call, "action", None)
        if isinstance(action, Action):
            found.append(action)
        stack.extend(dependant.dependencies)
    assert len(set(found)) <= 1, f"{route.path} names several actions: {found}"
    return found[0] if found else None


def app_routes() -> list[tuple[str, APIRoute | APIWebSocketRoute]]:
    """(full path, route) of every route of the app, through included routers (FastAPI >= 0.120
    keeps them as lazily included routers in `app.routes`)."""
    out = []
    for context in iter_route_contexts(create_app().routes):
        route = context.original_route
        if isinstance(route, APIRoute | APIWebSocketRoute) and context.path:
            out.append((context.path, route))
    return out


def route_actions() -> dict[str, Action]:
    """'METHOD /path' → Action for every HTTP route of the app (the UI is not mounted here)."""
    out: dict[str, Action] = {}
    missing = []
    for path, route in app_routes():
        if not isinstance(route, APIRoute):
            continue
        action = _action_of(route)
        for method in route.methods - {"HEAD", "OPTIONS"}:
            key = f"{method} {path}"
            if action is None:
                missing.append(key)
            else:
                out[key] = action
    assert not missing, f"routes without a permission rule (add Depends(permit(Action...))): {sorted(missing)}"
    return out


def test_every_route_has_exactly_one_rule():
    actions = route_actions()
    schema_routes = {f"{m.upper()} {p}" for p, ops in create_app().openapi()["paths"].items() for m in ops}
    assert schema_routes <= set(actions), f"OpenAPI routes without a rule: {schema_routes - set(actions)}"
    for key, action in actions.items():
        method, path = key.split(" ", 1)
        if method != "GET" and key not in SIGN_IN_ROUTES:
            assert Role.ANONYMOUS not in PERMISSIONS[action], f"{key} changes data but is open to anonymous callers"
        if path.startswith(ADMIN_ONLY_PREFIXES):
            assert PERMISSIONS[action] == {Role.ADMIN}, f"{key} must be admin-only, is {sorted(PERMISSIONS[action])}"


def _call(client: httpx.Client, key: str, token: str | None) -> httpx.Response:
    method, path = key.split(" ", 1)
    for name, value in PLACEHOLDERS.items():
        path = path.replace("{" + name + "}", value)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, path, json=body, headers=headers)


def test_every_route_as_every_role(servers):
    server = servers()
    tokens: dict[Role, str | None] = {
        Role.ANONYMOUS: None,
        Role.MEMBER: wallet_sign_in(server)[0],
        Role.MAINTAINER: api_token(server, "maintainer"),
        Role.ADMIN: ADMIN_TOKEN,
    }
    wrong: list[str] = []
    tried = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens[Role.MEMBER]}"}).json()
        assert me["role"] == "member" and me["name"].startswith("wallet:0x")
        # signing out ends the token in hand, so it goes last
        for key, action in sorted(route_actions().items(), key=lambda item: (item[0].endswith("/logout"), item[0])):
            for role, token in tokens.items():
                response = _call(client, key, token)
                tried += 1
                refused = response.status_code in (401, 403) and "may not" in response.text or (
                    role is Role.ANONYMOUS and response.status_code == 401)
                expected = role not in PERMISSIONS[action]
                if refused != expected or response.status_code >= 500:
                    wrong.append(f"{key} as {role.value}: {response.status_code} {response.text[:160]}"
                                 f" (expected {'refused' if expected else 'allowed'} for {action.value})")
    assert not wrong, "\n".join(wrong)
    assert tried >= 4 * 30  # the whole API, not a slice of it


def test_every_websocket_action_as_every_role(servers):
    server = servers()
    assert [path for path, r in app_routes() if isinstance(r, APIWebSocketRoute)] == ["/ws"]
    tokens = {Role.ANONYMOUS: None, Role.MEMBER: wallet_sign_in(server)[0], Role.ADMIN: ADMIN_TOKEN}
    for role, token in tokens.items():
        url = server.ws_url + (f"?token={token}" if token else "")
        with ws_connect(url, open_timeout=10) as ws:
            for action, needed in WS_ACTIONS.items():
                ws.send(json.dumps({"action": action, "sessionId": "*"}))
                reply = json.loads(ws.recv(timeout=10))
                refused = reply["event"] == "error" and "may not" in reply["data"].get("message", "")
                assert refused == (role not in PERMISSIONS[needed]), (role, action, reply)
            ws.send(json.dumps({"action": "format-disk"}))
            assert json.loads(ws.recv(timeout=10))["event"] == "error"
