"""Fault injection (issue 18): each test stops or breaks one component mid-run and checks that it
costs only a delay: no wrong state, no lost or doubled message, no run lost or run twice."""

from tests.faults.services import own_postgres, own_redis  # noqa: F401 (fixtures)
from tests.server.conftest import *  # noqa: F401,F403 (ServerProcess, WSCollector, the tiny session)
