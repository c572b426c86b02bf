"""Replay for a WebSocket client watching every session ("*"): it disconnects, sessions change
(and new ones appear) while it is away, it reconnects with where it left off, and it gets every
message it missed exactly once, private sessions only when they are its own. Real server (no
executor: edits make the messages), real WebSocket clients."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.server.conftest import WSCollector, reference_session, wait_until


@pytest.fixture
def server(servers):
    return servers(COTRAIN_EMBEDDED_WORKER="0")


def draft(api, **changes):
    return api.post("/sessions", json=reference_session(autoStart=False, **changes)).json()["id"]


def stored(api, sid):
    """Every message of a session as the database keeps them: (sessionId, seq) pairs."""
    return [(sid, m["seq"]) for m in api.get(f"/sessions/{sid}/events", params={"limit": 10000}).json()]


def received(ws):
    return [(m["data"]["sessionId"], m["data"]["seq"]) for m in ws.messages if m["event"].startswith("training.")]


def where_left_off(ws):
    """What a dashboard keeps: the last seq per session, and the time of its `subscribed` acknowledgement."""
    last: dict[str, int] = defaultdict(int)
    for sid, seq in received(ws):
        last[sid] = max(last[sid], seq)
    return {"sessions": dict(last), "since": ws.of("subscribed")[-1]["data"]["time"]}


def subscribe_all(url, after=None):
    ws = WSCollector(url)
    ws.send({"action": "subscribe", "sessionId": "*", **({"after": after} if after is not None else {})})
    wait_until(lambda: ws.of("subscribed"), 10, "the acknowledgement")
    return ws


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_all_sessions_subscriber_misses_nothing_across_a_reconnect(servers, request, database):
    env = {"DATABASE_URL": request.getfixturevalue("pg_url")} if database == "postgresql" else {}
    server = servers(COTRAIN_EMBEDDED_WORKER="0", **env)
    admin = server.client()
    alice_token = admin.post("/auth/tokens", json={"name": "alice"}).json()["token"]
    alice = server.client(alice_token)
    a, b = draft(alice), draft(alice)
    secret = draft(alice, public=False)
    quiet = draft(alice)  # changes only while the clients are away, and is never in their maps

    anyone = subscribe_all(server.ws_url)
    owner = subscribe_all(f"{server.ws_url}?token={alice_token}")
    public_before = {m for sid in (a, b, quiet) for m in stored(alice, sid)}
    alice.patch(f"/sessions/{a}", json={"name": "a1"})
    alice.patch(f"/sessions/{secret}", json={"name": "s1"})
    wait_until(lambda: len(received(owner)) == 2 and received(anyone), 10, "the live messages")
    assert received(anyone) == [(a, 2)]
    first_connection = set(received(anyone))
    anyone.close()
    owner.close()
    anyone_at, owner_at = where_left_off(anyone), where_left_off(owner)
    assert anyone_at["sessions"] == {a: 2} and owner_at["sessions"] == {a: 2, secret: 2}

    # while both are away
    alice.patch(f"/sessions/{a}", json={"name": "a2"})
    alice.patch(f"/sessions/{b}", json={"name": "b1"})
    alice.patch(f"/sessions/{secret}", json={"name": "s2"})
    alice.patch(f"/sessions/{quiet}", json={"name": "q1"})
    c = draft(alice)
    hidden = draft(alice, public=False)

    anyone = subscribe_all(server.ws_url, anyone_at)
    owner = subscribe_all(f"{server.ws_url}?token={alice_token}", owner_at)
    try:
        missed_public = [(a, 3), (b, 2), (quiet, 2), *stored(alice, c)]
        wait_until(lambda: len(received(anyone)) == len(missed_public), 10, "the replay")
        assert received(anyone) == missed_public  # in the order they happened, nothing private
        missed_owner = [(a, 3), (b, 2), (secret, 3), (quiet, 2), *stored(alice, c), *stored(alice, hidden)]
        wait_until(lambda: len(received(owner)) == len(missed_owner), 10, "the owner's replay")
        assert received(owner) == missed_owner

        # live messages follow the replay, each once
        alice.patch(f"/sessions/{c}", json={"name": "c1"})
        wait_until(lambda: received(anyone)[-1] == (c, 2), 10, "the live message after the replay")
        for ws in (anyone, owner):
            ws.send({"action": "ping"})
        wait_until(lambda: anyone.of("pong") and owner.of("pong"), 10, "the pongs")
        assert len(received(anyone)) == len(set(received(anyone)))
        assert len(received(owner)) == len(set(received(owner))) and received(owner)[-1] == (c, 2)
        # across both connections: every public message since it first subscribed, none twice
        everything = {m for sid in (a, b, quiet, c) for m in stored(alice, sid)}
        assert first_connection | set(received(anyone)) == everything - public_before
        assert not first_connection & set(received(anyone))
    finally:
        anyone.close()
        owner.close()


def test_all_sessions_replay_without_since_only_replays_the_listed_sessions(server):
    api = server.client()
    a, b = draft(api), draft(api)
    ws = subscribe_all(server.ws_url, {"sessions": {a: 0, "no-such-session": 3}})
    try:
        wait_until(lambda: received(ws) == [(a, 1)], 10, "the replay of the listed session")
        ack = ws.of("subscribed")[0]["data"]
        assert ack["after"] == {"sessions": {a: 0, "no-such-session": 3}, "since": None} and ack["time"] > 0
        api.patch(f"/sessions/{b}", json={"name": "b1"})
        wait_until(lambda: received(ws)[-1] == (b, 2), 10, "the live message")
        assert received(ws) == [(a, 1), (b, 2)]
    finally:
        ws.close()


@pytest.mark.parametrize(
    "after, says",
    [
        (5, 'For sessionId "*", after must be an object'),
        ("yesterday", 'For sessionId "*", after must be an object'),
        ({"abc": 3}, 'For sessionId "*", after must be an object'),
        ({"sessions": {"abc": -1}}, "the seq of session 'abc' must be a non-negative integer, not -1"),
        ({"sessions": {"abc": "3"}}, "the seq of session 'abc' must be a non-negative integer"),
        ({"sessions": ["abc"]}, "sessions may list at most"),
        ({"since": "today"}, "since must be a unix time in seconds, not 'today'"),
        ({"since": True}, "since must be a unix time in seconds"),
    ],
)
def test_bad_after_for_all_sessions_is_explained(server, after, says):
    ws = WSCollector(server.ws_url)
    try:
        ws.send({"action": "subscribe", "sessionId": "*", "after": after})
        ws.send({"action": "subscribe", "sessionId": "some-session", "after": {"sessions": {}}})
        wait_until(lambda: len(ws.of("error")) == 2, 10, "the errors")
        first, second = (m["data"]["message"] for m in ws.of("error"))
        assert says in first and first.endswith(".")
        assert "after must be a non-negative integer" in second
        assert not ws.of("subscribed")  # not subscribed by a request it refused
    finally:
        ws.close()
