"""Issue 19 against the read rule: a private session's machines and rounds are 404 to everyone but
its owner, maintainers and admins, and /metrics (public) never names it for them, not even by id;
a scrape with the owner's or an admin's token sees it. Real server, real tokens and wallets."""

from __future__ import annotations

import time

import httpx

from cotrain.db import make_db_factory, make_engine
from cotrain.server.orm import TrainingSession
from tests.security.conftest import ADMIN_TOKEN, api_token, reference_session, wallet_sign_in
from tests.server.node_events import apply_events, node, progress, round_block


def scrape(server, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(server.url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def test_a_private_sessions_machines_are_hidden_from_everyone_else(servers, cotrain_home):
    server = servers()
    owner_token, _ = wallet_sign_in(server)
    stranger_token, _ = wallet_sign_in(server)
    member_token = api_token(server, "member")
    maintainer_token = api_token(server, "maintainer")
    ids = {}
    for name, token, public in (("secret", owner_token, False), ("open", ADMIN_TOKEN, True)):
        with server.client(token) as client:  # drafts: nothing trains; the monitor gets the events below
            created = client.post("/sessions", json=reference_session(name=name, public=public, autoStart=False))
            assert created.status_code == 201, created.text
            ids[name] = created.json()["id"]
    url = f"sqlite:///{cotrain_home / 'cotrain.db'}"
    now = time.time()
    for sid in ids.values():
        apply_events(url, sid, [progress(10, [node("node-0", now, gpus=1), node("node-1", now)],
                                         round_=round_block(1, [("node-0", 3.0)]))], status="completed")
    secret, public = ids["secret"], ids["open"]

    for who, token in {"anonymous": None, "wallet stranger": stranger_token, "member token": member_token}.items():
        with server.client(token) as client:
            for route in ("/nodes", "/rounds"):
                response = client.get(f"/sessions/{secret}{route}")
                assert response.status_code == 404, (who, route, response.status_code, response.text[:200])
                assert secret not in response.text or "No session" in response.text
            assert client.get(f"/sessions/{public}/nodes").json()["nodes"][0]["node"] == "node-0", who
            assert client.get(f"/sessions/{public}/rounds").json()["totalRounds"] == 1, who
        text = scrape(server, token)
        assert secret not in text, who  # not a series, not a label, not a count by id
        assert f'cotrain_node_cpu_percent{{session="{public}",node="node-0"}}' in text, who

    for who, token in {"owner": owner_token, "maintainer": maintainer_token, "admin": ADMIN_TOKEN}.items():
        with server.client(token) as client:
            nodes = client.get(f"/sessions/{secret}/nodes")
            assert nodes.status_code == 200, (who, nodes.text)
            assert [n["node"] for n in nodes.json()["nodes"]] == ["node-0", "node-1"]
            assert client.get(f"/sessions/{secret}/rounds").json()["rounds"][0]["round"] == 1
        text = scrape(server, token)
        assert f'cotrain_node_gpu_util_percent{{session="{secret}",node="node-0",gpu="0"}}' in text, who
        assert f'cotrain_node_cpu_percent{{session="{public}",node="node-0"}}' in text, who

    # a session that finished long ago drops out of /metrics (bounded labels), yet the API keeps its history
    engine = make_engine(url)
    with make_db_factory(engine).begin() as db:
        db.get_one(TrainingSession, public).finished_at = now - 3600
    engine.dispose()
    assert public not in scrape(server, ADMIN_TOKEN)
    with server.client() as admin:
        assert len(admin.get(f"/sessions/{public}/nodes").json()["history"]) == 2
