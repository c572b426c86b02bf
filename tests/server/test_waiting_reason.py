"""A queued session says why it waits: no worker is running, or no worker has the GPUs per node it
asks for (it stays queued, and the worker keeps running the sessions that fit). Real server and
`cotrain worker` processes sharing PostgreSQL; the workers table comes from the migrations, which
must build exactly the models on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cotrain.chain.orm import CHAIN_TABLES
from cotrain.db import Base, make_engine, run_migrations
from tests.server.conftest import reference_session, wait_until

NO_WORKER = "Waiting: no worker is running."


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_server_models(request, tmp_path, database):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    try:
        run_migrations(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    chain = {table.name for table in CHAIN_TABLES}
    ours = [d for d in diff if not any(name in repr(d) for name in chain) and "alembic_version" not in repr(d)]
    assert ours == []


def session(api, sid):
    return api.get(f"/sessions/{sid}").json()


@pytest.mark.slow
def test_a_session_too_big_for_every_worker_says_so_and_waits(servers, pg_url):
    shared = {"DATABASE_URL": pg_url, "COTRAIN_EMBEDDED_WORKER": "0"}
    api = servers(**shared).client()
    body = reference_session(name="needs four GPUs")
    body["distributedConfig"]["gpusPerNode"] = 4
    big = api.post("/sessions", json=body).json()
    assert big["status"] == "queued" and big["waitingReason"].startswith(NO_WORKER)
    assert api.get(f"/sessions/{big['id']}/status").json()["waitingReason"].startswith(NO_WORKER)

    # a machine with two GPUs (as far as the worker knows: this one trains on CPU either way)
    worker = servers("worker", **shared, COTRAIN_WORKER_ID="gpu-box-1", COTRAIN_GPUS="0,1")
    too_big = "Waiting: needs 4 GPUs per node; the largest worker (gpu-box-1) has 2. Lower gpusPerNode to 2 or fewer"
    wait_until(lambda: session(api, big["id"])["waitingReason"].startswith(too_big), 30,
               "the reason to name the worker")
    listed = {s["id"]: s for s in api.get("/sessions").json()["items"]}
    assert listed[big["id"]]["waitingReason"].startswith(too_big)

    # the worker skips it and goes on with what fits
    small = api.post("/sessions", json=reference_session(name="fits")).json()
    done = wait_until(lambda: (s := session(api, small["id"]))["status"] in ("completed", "failed") and s, 180,
                      "the session that fits to finish")
    assert done["status"] == "completed", done["error"]
    assert done["waitingReason"] is None and done["workerId"] is None
    still = session(api, big["id"])
    assert still["status"] == "queued" and still["attempts"] == 0 and still["waitingReason"].startswith(too_big)
    assert "Traceback" not in worker.log_path.read_text()

    # a worker that stops takes its capacity with it
    worker.stop()
    assert session(api, big["id"])["waitingReason"].startswith(NO_WORKER)
    assert api.post(f"/sessions/{big['id']}/cancel").json()["waitingReason"] is None


def test_openapi_documents_waiting_reason(servers):
    server = servers(COTRAIN_EMBEDDED_WORKER="0")
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    field = schema["components"]["schemas"]["SessionOut"]["properties"]["waitingReason"]
    assert "queued" in field["description"] and "GPUs per node or memory" in field["description"]


def test_every_revision_id_fits_postgresqls_alembic_version_column():
    """alembic_version.version_num is VARCHAR(32): a longer id migrates on SQLite and fails on PostgreSQL."""
    import re
    from pathlib import Path

    import cotrain.db

    versions = Path(cotrain.db.__file__).parent / "migrations" / "versions"
    revision = re.compile(r"^revision = [\"']([^\"']+)[\"']", re.M)
    ids = {path.name: revision.search(path.read_text()) for path in versions.glob("*.py")}
    assert all(ids.values()), [name for name, found in ids.items() if not found]
    too_long = {name: found.group(1) for name, found in ids.items() if found and len(found.group(1)) > 32}
    assert not too_long, too_long
