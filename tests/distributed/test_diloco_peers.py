"""DiLoCo peers see each other through their signed progress records: participants and the
`peer` events (joined / left) the loop can emit."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cotrain.config import load_config
from cotrain.core.strategies import make_strategy
from cotrain.core.strategies.diloco import DilocoStrategy
from cotrain.p2p.dht import start_dht, visible_maddrs


def _strategy(initial_peers: list[str], checkpoints: Path) -> DilocoStrategy:
    config = load_config(data={
        "session": {"id": "peers-test"},
        "checkpoint": {"output_path": str(checkpoints)},
        "data": {"dataset": "stdlib"},
        "distributed": {"strategy": "diloco", "diloco": {
            "initial_peers": initial_peers, "host_maddrs": ["/ip4/127.0.0.1/tcp/0"], "progress_interval": 0.5,
            "wallet": "0xfeed",
        }},
    })
    strategy = make_strategy(config, torch.device("cpu"))
    assert isinstance(strategy, DilocoStrategy)
    return strategy


def _eventually(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_peers_join_and_leave_through_progress_records(tmp_path: Path):
    bootstrap = start_dht()
    peers = visible_maddrs(bootstrap)
    first, second = _strategy(peers, tmp_path / "first"), _strategy(peers, tmp_path / "second")
    try:
        first.setup()
        second.setup()
        assert first.is_main and second.is_main and first.data_shard() == (0, 1)
        assert first.data_seed() != second.data_seed()  # each peer draws its own samples
        _eventually(lambda: first.participants() == 2)
        joined = _eventually(first.peer_events)
        assert joined[0]["event"] == "joined" and joined[0]["peer_id"] == second.peer_id
        assert joined[0]["wallet"] == "0xfeed" and "peer_step" in joined[0] and "step" not in joined[0]
        second.shutdown()  # publishes an inactive record: the others stop counting it at once
        left = _eventually(first.peer_events)
        assert left[0]["event"] == "left" and left[0]["peer_id"] == second.peer_id
        assert first.participants() == 1
        # a restarted peer keeps its peer id (the key file lives beside its checkpoints)
        again = _strategy(peers, tmp_path / "second")
        again.setup()
        assert again.peer_id == second.peer_id
        again.shutdown()
    finally:
        second.shutdown()
        first.shutdown()
        bootstrap.shutdown()
