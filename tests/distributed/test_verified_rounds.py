"""Verified rounds with real engine peers on loopback: a validating peer judges every member of every round
from the commitments, receipts and updates the peers publish, and names each kind of cheat
(tests/distributed/adversaries.py) with its reason code, while the honest peers' rounds are verified."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tests.distributed.test_diloco import Peer, _prepare, run_to_completion

INNER_STEPS = 8
ROUNDS = 4
SHARDS = "shard_samples = 16\n"
VALIDATE = "validate = true\n"


def reasons_by_peer(events: list[dict]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if event["type"] == "verdict":
            for verdict in event["verdicts"]:
                found[verdict["peer_id"]].append(verdict["reason"])
    return found


@pytest.mark.slow
def test_a_validator_verifies_honest_rounds_and_names_each_cheat(bootstrap: str, shared_datasets: Path,
                                                                 tmp_path: Path):
    _prepare(shared_datasets, tmp_path)
    # shards of two batches: each sample is seen 4 times a round, so the own-data check tells honest work
    # from copied, random or misplaced work even in the last rounds, where the learning rate has decayed
    common = dict(max_steps=INNER_STEPS * ROUNDS, inner_steps=INNER_STEPS, min_peers=3, diloco=SHARDS)
    validator = Peer("validator", tmp_path, shared_datasets, bootstrap, **{**common, "diloco": SHARDS + VALIDATE})
    honest = Peer("honest", tmp_path, shared_datasets, bootstrap, **common)
    cheats = {kind: Peer(kind, tmp_path, shared_datasets, bootstrap, adversary=kind, **common)
              for kind in ("copycat", "noise", "wrong_shard", "zero_work")}
    run_to_completion([validator, honest, *cheats.values()], tmp_path)

    reasons = reasons_by_peer(validator.events())
    judged_rounds = {e["round"] for e in validator.events() if e["type"] == "verdict"}
    assert len(judged_rounds) >= ROUNDS - 1, judged_rounds
    print("\nverdicts:", {name: reasons[p.peer_id()] for name, p in
                          [("validator", validator), ("honest", honest), *cheats.items()]})
    for peer in (validator, honest):
        assert reasons[peer.peer_id()] and set(reasons[peer.peer_id()]) == {"verified"}, reasons[peer.peer_id()]
    expected = {"copycat": "duplicate_update", "noise": "own_data_fail", "wrong_shard": "own_data_fail",
                "zero_work": "no_commit"}
    for kind, reason in expected.items():
        got = reasons[cheats[kind].peer_id()]
        assert got and "verified" not in got and reason in got, (kind, got)
