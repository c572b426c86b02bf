"""Round shards (core/shards.py): one public, reproducible shard per peer and round, and the
trainer training on the batch a strategy chooses (Strategy.round_batch_indices)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch

from cotrain.config import ConfigError, CotrainConfig, load_config
from cotrain.config.schema import DilocoConfig
from cotrain.core.batches import BatchSchedule
from cotrain.core.shards import (
    CONTROL_PEER,
    random_shard_seed,
    shard_batch,
    shard_id,
    shard_indices,
    shard_seed,
)
from cotrain.core.strategies.base import Strategy
from cotrain.core.train import StopRequest, Trainer
from cotrain.p2p.server_join import volunteer_config
from cotrain.paths import Layout
from tests.conftest import PYTHON, tiny_config

SESSION, BASE = "sess-1", "0123456789abcdef"
PEERS = [f"12D3KooWPeer{i}" for i in range(6)]


def test_the_seed_is_the_published_formula():
    digest = hashlib.sha256(f"cotrain-shard|{SESSION}|7|{BASE}|{PEERS[0]}".encode()).digest()
    assert shard_seed(SESSION, 7, BASE, PEERS[0]) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert shard_id(SESSION, 7, BASE, PEERS[0]) == digest[:8].hex()
    assert 0 <= shard_seed(SESSION, 7, BASE, PEERS[0]) < 2**63


def test_same_inputs_give_the_same_shard_here_and_in_a_fresh_process():
    seed = shard_seed(SESSION, 3, BASE, PEERS[1])
    first = shard_indices(50_000, 512, seed)
    assert torch.equal(first, shard_indices(50_000, 512, seed))
    assert torch.equal(shard_batch(first, 5, 16), shard_batch(shard_indices(50_000, 512, seed), 5, 16))
    code = (
        "import json; from cotrain.core.shards import shard_seed, shard_id, shard_indices;"
        f"s = shard_seed({SESSION!r}, 3, {BASE!r}, {PEERS[1]!r});"
        f"i = shard_id({SESSION!r}, 3, {BASE!r}, {PEERS[1]!r});"
        "print(json.dumps([s, i, shard_indices(50_000, 512, s).tolist()]))"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    other_seed, other_id, other_indices = json.loads(out)
    assert other_seed == seed and other_id == shard_id(SESSION, 3, BASE, PEERS[1])
    assert other_indices == first.tolist()


def test_a_different_round_base_or_peer_gives_a_different_shard():
    reference = shard_indices(50_000, 256, shard_seed(SESSION, 3, BASE, PEERS[0]))
    variants = [
        (SESSION, 4, BASE, PEERS[0]),
        (SESSION, 3, "fedcba9876543210", PEERS[0]),
        (SESSION, 3, BASE, PEERS[1]),
        ("sess-2", 3, BASE, PEERS[0]),
    ]
    ids = {shard_id(SESSION, 3, BASE, PEERS[0])}
    for variant in variants:
        ids.add(shard_id(*variant))
        other = shard_indices(50_000, 256, shard_seed(*variant))
        assert not torch.equal(other, reference), variant
        assert len(set(other.tolist()) & set(reference.tolist())) < 16, variant  # expected overlap: ~1.3
    assert len(ids) == len(variants) + 1


def test_shards_hold_distinct_in_range_samples_and_are_capped_at_the_split():
    shard = shard_indices(1000, 300, 42)
    assert shard.dtype == torch.int64 and len(shard) == 300
    assert len(set(shard.tolist())) == 300 and 0 <= int(shard.min()) and int(shard.max()) < 1000
    whole = shard_indices(5, 10, 42)
    assert sorted(whole.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        shard_indices(0, 10, 42)


def test_peers_of_one_round_overlap_only_by_chance_on_a_large_corpus():
    num_samples, size = 1_000_000, 10_000
    shards = [set(shard_indices(num_samples, size, shard_seed(SESSION, 9, BASE, p)).tolist()) for p in PEERS[:3]]
    expected = size * size / num_samples  # 100, standard deviation ~10
    for a in range(3):
        for b in range(a + 1, 3):
            overlap = len(shards[a] & shards[b])
            assert 0.4 * expected < overlap < 1.6 * expected, (a, b, overlap)


def test_shard_batch_reads_the_shard_in_blocks_and_wraps():
    shard = torch.arange(100, 110)
    assert shard_batch(shard, 0, 4).tolist() == [100, 101, 102, 103]
    assert shard_batch(shard, 1, 4).tolist() == [104, 105, 106, 107]
    assert shard_batch(shard, 2, 4).tolist() == [108, 109, 100, 101]
    assert shard_batch(shard, 5, 4).tolist() == [100, 101, 102, 103]  # 20 positions in: twice round
    # a shard of inner_steps × batch_size samples: every inner step a fresh batch, together the whole shard
    inner_steps, batch = 6, 8
    full = shard_indices(10_000, inner_steps * batch, 7)
    steps = [shard_batch(full, s, batch) for s in range(inner_steps)]
    assert torch.equal(torch.cat(steps), full)
    with pytest.raises(ValueError):
        shard_batch(torch.empty(0, dtype=torch.long), 0, 4)


def test_the_control_shard_is_no_peers():
    control = random_shard_seed(SESSION, 9, BASE)
    assert control == random_shard_seed(SESSION, 9, BASE)
    assert control != random_shard_seed(SESSION, 10, BASE) and control != random_shard_seed(SESSION, 9, "ff" * 8)
    control_shard = shard_indices(50_000, 512, control)
    for peer in PEERS:
        assert shard_seed(SESSION, 9, BASE, peer) != control
        assert not torch.equal(shard_indices(50_000, 512, shard_seed(SESSION, 9, BASE, peer)), control_shard)
    with pytest.raises(ValueError, match="control"):
        shard_seed(SESSION, 9, BASE, CONTROL_PEER)
    with pytest.raises(ValueError, match="control"):
        shard_id(SESSION, 9, BASE, CONTROL_PEER)


def test_a_process_slice_of_a_chosen_batch_is_the_schedules_own_slicing():
    whole = BatchSchedule(1000, 8, seed=3)
    halves = [BatchSchedule(1000, 8, seed=3, shard_index=i, shard_count=2) for i in range(2)]
    for step in range(4):
        batch = whole.indices(step)
        assert torch.equal(torch.cat([h.indices(step) for h in halves]), batch)
        assert [h.process_slice(batch).tolist() for h in halves] == [h.indices(step).tolist() for h in halves]
    with pytest.raises(ValueError, match="8 samples"):
        halves[0].process_slice(torch.arange(6))


class ChosenBatch(Strategy):
    """Single process that is the second of two splitting each batch, training on `batch` when set."""

    def __init__(self, config: CotrainConfig, device: torch.device):
        super().__init__(config, device)
        self.batch: torch.Tensor | None = None
        self.asked: list[int] = []

    def data_shard(self) -> tuple[int, int]:
        return 1, 2

    def round_batch_indices(self, step: int, schedule: BatchSchedule) -> torch.Tensor | None:
        self.asked.append(step)
        return self.batch


def test_train_step_trains_on_the_strategys_batch(cotrain_home: Path, tmp_path: Path):
    config = load_config(tiny_config(tmp_path / "shards.toml", "shards", max_steps=4))
    trainer = Trainer(config, Layout.from_env().ensure(), StopRequest())
    strategy = ChosenBatch(config, trainer.device)
    trainer.strategy = strategy
    trainer.setup()
    assert trainer.micro_batch * trainer.accumulation == 4  # this process's half of batch_size 8

    def loss_on(indices: torch.Tensor) -> float:
        with torch.no_grad():
            inputs, targets = trainer._inputs_and_targets(trainer.train_samples.get(indices), 0, 0)
            return trainer._loss(inputs, targets)[0].item()

    # None: the schedule's batch, as before the hook existed
    expected = loss_on(trainer.schedule.indices(0))
    assert trainer.train_step(0, False).loss == pytest.approx(expected, rel=1e-5)

    last = len(trainer.train_samples)
    chosen = torch.arange(last - 8, last)  # neighbours at the end: a batch the schedule would not draw
    strategy.batch = chosen
    mine, other, scheduled = loss_on(chosen[4:]), loss_on(chosen[:4]), loss_on(trainer.schedule.indices(1))
    assert min(abs(mine - other), abs(mine - scheduled)) > 1e-4  # the three batches are told apart by their loss
    assert trainer.train_step(1, False).loss == pytest.approx(mine, rel=1e-5)
    assert strategy.asked == [0, 1]

    strategy.batch = chosen[:6]
    with pytest.raises(ValueError, match="8 samples"):
        trainer.train_step(2, False)


def test_round_shard_settings_resolve_and_are_checked(tmp_path: Path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the `validate` key must not warn on every command
        config = load_config(tiny_config(tmp_path / "v.toml", "v", extra=(
            '\n[distributed]\nstrategy = "diloco"\n[distributed.diloco]\ninner_steps = 10\nvalidate = true\n'
            "receipt_quorum = 2\nown_data_margin = 0.01\n"
        )))
    diloco = config.distributed.diloco
    assert diloco.validate is True and (diloco.receipt_quorum, diloco.own_data_margin) == (2, 0.01)
    assert (diloco.shard_size(8), diloco.commit_interval) == (20, 2)  # the defaults: H × B / 4 (4 passes), H // 4
    assert diloco.shard_size(64) == 160 and DilocoConfig(inner_steps=2).shard_size(8) == 8  # at least a batch
    diloco.shard_samples, diloco.commit_every = 500, 10
    assert (diloco.shard_size(8), diloco.commit_interval) == (500, 10)

    bad = tiny_config(tmp_path / "bad.toml", "bad", extra=(
        '\n[distributed]\nstrategy = "diloco"\n[distributed.diloco]\ninner_steps = 10\nshard_samples = 4\n'
        "commit_every = 11\n"
    ))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    problems = err.value.problems
    assert any(p.startswith("distributed.diloco.shard_samples = 4") and "batch_size (8)" in p for p in problems)
    assert any(p.startswith("distributed.diloco.commit_every = 11") and "inner_steps (10)" in p for p in problems)
    with pytest.raises(ConfigError, match="own_data_margin"):
        load_config(bad, overrides=["distributed.diloco.shard_samples=8", "distributed.diloco.commit_every=1",
                                    "distributed.diloco.own_data_margin=nan"])


def test_a_volunteer_takes_the_sessions_shard_settings_but_not_its_validator_choice():
    server = {"distributed": {"diloco": {"shard_samples": 640, "commit_every": 5, "receipt_quorum": 2,
                                         "own_data_margin": 0.02, "validate": True}}}
    kept, dropped = volunteer_config(server)
    assert kept["distributed"]["diloco"] == {"shard_samples": 640, "commit_every": 5, "receipt_quorum": 2,
                                             "own_data_margin": 0.02}
    assert dropped == ["distributed.diloco.validate"]
