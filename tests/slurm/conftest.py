"""The package's Slurm cluster: one real two-node cluster (tests/slurm/cluster.py) for all its tests.
While it runs, os.environ carries its SLURM_CONF, so servers and workers that tests start reach it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import missing_service
from tests.slurm.cluster import SlurmCluster, missing_slurm


@pytest.fixture(scope="package")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = missing_slurm()
    if reason:
        missing_service(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except RuntimeError as error:
        logs = "\n".join(f"--- {name}\n{cluster.log(name)[-1500:]}" for name in
                         ("munged", "slurmctld", *(f"slurmd-{node}" for node in cluster.nodes)))
        pytest.fail(f"the Slurm test cluster did not start: {error}\n{logs}")
    saved = {key: os.environ.get(key) for key in cluster.env}
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.stop()
