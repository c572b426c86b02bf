"""An absurd update never touches an honest peer's model: a member that scales its pseudo-gradient a million
times (tests/distributed/adversaries.py `huge`) makes the group's average absurd; every honest peer refuses to
apply it (core/strategies/sanity.py), the validator judges the round anyway and excludes the member from the
same round, and the honest peers then train on without it."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.distributed.test_diloco import Peer, _prepare, run_to_completion

INNER_STEPS = 8
ROUNDS = 3
SHARDS = "shard_samples = 16\n"


def verdicts_by_peer(events: list[dict]) -> dict[str, dict[int, str]]:
    """peer id → {round: reason} (a round judged twice keeps its first verdict, as the ledger does)."""
    found: dict[str, dict[int, str]] = defaultdict(dict)
    for event in events:
        if event["type"] == "verdict":
            for verdict in event["verdicts"]:
                found[verdict["peer_id"]].setdefault(verdict["round"], verdict["reason"])
    return found


def peer_id_when_up(peer: Peer, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return peer.peer_id()
        except AssertionError:
            assert peer.proc.poll() is None and time.monotonic() < deadline, f"{peer.name} did not start its DHT"
            time.sleep(0.3)


@pytest.mark.slow
def test_an_absurd_update_is_refused_and_its_sender_excluded(bootstrap: str, shared_datasets: Path, tmp_path: Path):
    _prepare(shared_datasets, tmp_path)
    common = dict(max_steps=INNER_STEPS * ROUNDS, inner_steps=INNER_STEPS, min_peers=3)
    validator = Peer("validator", tmp_path, shared_datasets, bootstrap,
                     diloco=SHARDS + "validate = true\naudit_fraction = 1.0\n", **common)
    trusting = SHARDS + f'validators = ["{peer_id_when_up(validator)}"]\n'
    honest = [Peer(f"honest{i}", tmp_path, shared_datasets, bootstrap, diloco=trusting, **common) for i in range(2)]
    huge = Peer("huge", tmp_path, shared_datasets, bootstrap, adversary="huge", diloco=trusting, **common)
    try:
        run_to_completion([validator, *honest], tmp_path)
    finally:
        huge.stop()  # it applied its own absurd averages: its loss went to NaN and it failed, as it should

    reasons = verdicts_by_peer(validator.events())[huge.peer_id()]
    assert "non_finite" in reasons.values() and "verified" not in reasons.values(), reasons
    for peer in (validator, *honest):
        log = (tmp_path / f"{peer.name}.log").read_text()
        assert "averaged update is refused" in log, peer.name
        applied = peer.outer_steps()
        assert applied, peer.name
        assert all(math.isfinite(e["loss"]) and e["loss"] < 20 for e in applied.values()), applied
    # the honest peers hold the same global params after every round they applied
    last = max(validator.outer_steps())
    assert len({p.outer_steps()[last]["params_hash"] for p in (validator, *honest)}) == 1
