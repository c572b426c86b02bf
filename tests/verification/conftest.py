"""The verification end-to-end tests run real servers and engine peers (tests/server's fixtures). `make test`
runs this folder in a lane of its own, beside tests/faults, while the rest of the suite runs."""

from tests.distributed.conftest import bootstrap  # noqa: F401 (the DHT node engine peers join through)
from tests.server.conftest import *  # noqa: F401,F403 (servers, the tiny session)
