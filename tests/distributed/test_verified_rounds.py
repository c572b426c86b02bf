"""Verified rounds with real engine peers on loopback: a validating peer judges every member of every round
from the commitments, receipts and updates the peers publish, and names each kind of cheat
(tests/distributed/adversaries.py) with its reason code, while the honest peers' rounds are verified. The
peers that trust the validator stop averaging with a cheat from the round after it was caught."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.distributed.test_diloco import Peer, _prepare, run_to_completion

INNER_STEPS = 8
ROUNDS = 4
# shards of two batches: each sample is seen 4 times a round, so the own-data check tells honest work from
# copied, random or misplaced work even in the last rounds, where the learning rate has decayed
SHARDS = "shard_samples = 16\n"
AUDIT_ALL = "validate = true\naudit_fraction = 1.0\n"  # every member's update scored every round
CHEATS = {"copycat": "duplicate_update", "noise": "own_data_fail", "wrong_shard": "own_data_fail",
          "zero_work": "no_commit"}


def verdicts_by_peer(events: list[dict]) -> dict[str, dict[int, str]]:
    """peer id → {round: reason}."""
    found: dict[str, dict[int, str]] = defaultdict(dict)
    for event in events:
        if event["type"] == "verdict":
            for verdict in event["verdicts"]:
                found[verdict["peer_id"]][verdict["round"]] = verdict["reason"]
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
def test_a_validator_verifies_honest_rounds_names_each_cheat_and_the_honest_peers_exclude_it(
        bootstrap: str, shared_datasets: Path, tmp_path: Path):
    _prepare(shared_datasets, tmp_path)
    common = dict(max_steps=INNER_STEPS * ROUNDS, inner_steps=INNER_STEPS, min_peers=3)
    validator = Peer("validator", tmp_path, shared_datasets, bootstrap, diloco=SHARDS + AUDIT_ALL, **common)
    trusting = SHARDS + f'validators = ["{peer_id_when_up(validator)}"]\n'
    honest = [Peer(f"honest{i}", tmp_path, shared_datasets, bootstrap, diloco=trusting, **common) for i in range(2)]
    cheats = {kind: Peer(kind, tmp_path, shared_datasets, bootstrap, adversary=kind, diloco=trusting, **common)
              for kind in CHEATS}
    run_to_completion([validator, *honest, *cheats.values()], tmp_path)

    events = validator.events()
    verdicts = verdicts_by_peer(events)
    names = {p.peer_id(): p.name for p in [validator, *honest, *cheats.values()]}
    print("\nverdicts:", {names.get(peer, peer): rounds for peer, rounds in verdicts.items()})
    judged = sorted({e["round"] for e in events if e["type"] == "verdict"})
    assert judged == list(range(1, ROUNDS + 1)), judged
    for peer in (validator, *honest):
        assert set(verdicts[peer.peer_id()].values()) == {"verified"}, (peer.name, verdicts[peer.peer_id()])
    for kind, reason in CHEATS.items():
        got = verdicts[cheats[kind].peer_id()]
        assert got and "verified" not in got.values() and reason in got.values(), (kind, got)

    # caught in round r, a cheat is in no honest group from round r + 2 on (the honest peers read the validator's
    # exclusions before each round; round r + 1 may already be under way when they are published)
    honest_ids = {validator.peer_id(), *(p.peer_id() for p in honest)}
    evidence = {e["round"]: e["evidence"] for e in events if e["type"] == "verdict"}
    for kind in ("copycat", "noise", "wrong_shard"):
        peer = cheats[kind].peer_id()
        caught = min(r for r, reason in verdicts[peer].items() if reason == CHEATS[kind])
        for round_ in range(caught + 2, ROUNDS + 1):
            receipts = evidence[round_]["receipts"]
            assert all(peer not in receipts[h]["members"] for h in honest_ids if h in receipts), (kind, round_)
    last = evidence[ROUNDS]["receipts"][validator.peer_id()]["members"]
    assert set(last) == honest_ids, {names.get(p, p) for p in last}
