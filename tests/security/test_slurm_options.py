"""A session's own Slurm options (`slurmConfig`, issue 15) against a real `cotrain up` that runs the Slurm
executor (COTRAIN_EXECUTOR=slurm, no worker: nothing is submitted): a member may not set them, a
maintainer may only narrow within what COTRAIN_SLURM_* allow, and nothing but a plain name reaches an
`#SBATCH` line. The worker's own check at submission is tests/slurm/test_session_options.py."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.security.conftest import ServerProcess, api_token
from tests.security.test_quotas import draft, member, quiet_env, refused

SLURM = {"COTRAIN_EXECUTOR": "slurm", "COTRAIN_SLURM_PARTITION": "debug", "COTRAIN_SLURM_PARTITIONS": "debug,long",
         "COTRAIN_SLURM_TIME_LIMIT": "2:00:00"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("slurm-options") / "home"
    home.mkdir()
    process = ServerProcess(home, quiet_env(home, **SLURM)).start()
    yield process
    process.stop(signal.SIGTERM)


def test_a_member_may_not_set_slurm_options(server):
    stranger = member(server)
    before = server.client().get("/sessions").json()["total"]
    refused(stranger.post("/sessions", json=draft(slurmConfig={"timeLimit": "30"})),
            "member", "slurmConfig", "maintainers and admins")
    assert server.client().get("/sessions").json()["total"] == before  # nothing was created

    own = stranger.post("/sessions", json=draft(name="mine"))
    assert own.status_code == 201, own.text
    refused(stranger.patch(f"/sessions/{own.json()['id']}", json={"slurmConfig": {"partition": "long"}}),
            "slurmConfig", "maintainers and admins")


def test_a_maintainer_narrows_only_within_what_the_executor_allows(server):
    maintainer = server.client(api_token(server, "maintainer", "ops"))
    detail = refused(maintainer.post("/sessions", json=draft(slurmConfig={"partition": "gpu"})),
                     "slurmConfig.partition", "'gpu'", "debug, long", "COTRAIN_SLURM_PARTITIONS", status=422)
    assert "\n" not in detail
    refused(maintainer.post("/sessions", json=draft(slurmConfig={"timeLimit": "1-00:00:00"})),
            "slurmConfig.timeLimit", "2:00:00", "COTRAIN_SLURM_TIME_LIMIT", status=422)
    refused(maintainer.post("/sessions", json=draft(slurmConfig={"account": "physics"})),
            "slurmConfig.account", "COTRAIN_SLURM_ACCOUNTS", status=422)  # none offered
    refused(maintainer.post("/sessions", json=draft(slurmConfig={"timeLimit": "0"})), "no time limit", status=422)
    # nothing but a name gets near the batch script's #SBATCH lines
    for sneaky in ({"partition": "debug\n#SBATCH --uid=0"}, {"qos": "normal --uid=0"}, {"timeLimit": "30 --hold"}):
        answer = maintainer.post("/sessions", json=draft(slurmConfig=sneaky))
        assert answer.status_code == 422, (sneaky, answer.text)

    made = maintainer.post("/sessions", json=draft(slurmConfig={"partition": "long", "timeLimit": "1:30:00"}))
    assert made.status_code == 201, made.text
    assert made.json()["request"]["slurmConfig"] == {"partition": "long", "timeLimit": "1:30:00"}
    edited = maintainer.patch(f"/sessions/{made.json()['id']}", json={"slurmConfig": {"timeLimit": "45"}})
    assert edited.status_code == 200, edited.text
    assert edited.json()["request"]["slurmConfig"] == {"partition": "long", "timeLimit": "45"}


def test_an_owner_keeps_editing_a_session_an_admin_narrowed(server):
    stranger = member(server)
    sid = stranger.post("/sessions", json=draft(name="narrowed")).json()["id"]
    admin = server.client()
    assert admin.patch(f"/sessions/{sid}", json={"slurmConfig": {"partition": "long"}}).status_code == 200
    renamed = stranger.patch(f"/sessions/{sid}", json={"name": "renamed"})  # slurmConfig unchanged: allowed
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["request"]["slurmConfig"] == {"partition": "long"}
    refused(stranger.patch(f"/sessions/{sid}", json={"slurmConfig": None}), "slurmConfig")  # nor widened again
