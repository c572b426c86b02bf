"""Fixtures of the distributed tests."""

from __future__ import annotations

import json

import pytest

from cotrain.p2p.dht import start_dht, visible_maddrs


@pytest.fixture
def bootstrap():
    """The DHT node peers join through (the server's role in production), as a JSON list of its addresses."""
    dht = start_dht()
    yield json.dumps(visible_maddrs(dht))
    dht.shutdown()
