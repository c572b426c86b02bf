"""Spot checks (core/spot_check.py) on simulated DiLoCo rounds of a real tiny Llama: a peer keeps its training state
at each commit point (core/round_states.py) and trains with the trainer's step math; a validator replays intervals
from those states. An honest peer reproduces exactly; a step with another learning rate or other data, or a state
unlike the commitment, fails naming the interval."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cotrain.config import CotrainConfig, ModelConfig, TrainConfig
from cotrain.core.inner_step import StepMath
from cotrain.core.llm import build_model
from cotrain.core.optim import build_optimizer, lr_at
from cotrain.core.round_states import BadRoundState, capture, load_round_state, save_round_state
from cotrain.core.spot_check import SpotChecker, spot_checks_apply
from cotrain.core.strategies.base import Strategy
from cotrain.core.strategies.diloco import params_hash
from cotrain.core.strategies.verified_rounds import RoundWork
from cotrain.core.train import token_cross_entropy
from cotrain.p2p.digests import tensor_digest
from cotrain.p2p.verification import Commitment, Reason

VOCAB, SEQ, NUM_SAMPLES, BATCH, SHARD = 128, 16, 256, 4, 24
SESSION, ROUND, PEER, FIRST = "s-spot", 4, "QmSpotPeer", 40
TRAIN = TrainConfig(device="cpu", deterministic=True, learning_rate=3e-3, warmup_steps=50, weight_decay=0.1,
                    grad_clip=0.5)
TOTAL_STEPS = 200
HOOKS = Strategy(CotrainConfig(train=TRAIN), torch.device("cpu"))


def trainable(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def forward_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    logits = model(input_ids=inputs, use_cache=False).logits
    return token_cross_entropy(logits, targets), logits


def step_math(data: torch.Tensor, lr_scale: float = 1.0) -> StepMath:
    """The trainer's math: two micro-batches per step, warmup lr, clipping, AdamW with weight decay."""
    return StepMath(
        samples=lambda indices: data[indices], inputs_and_targets=lambda tokens, step, micro: (tokens[:, :-1],
                                                                                              tokens[:, 1:]),
        forward_loss=forward_loss, lr_at=lambda step: lr_scale * lr_at(step, TRAIN, TOTAL_STEPS), accumulation=2,
        micro_batch=BATCH // 2, grad_clip=TRAIN.grad_clip, device=torch.device("cpu"),
    )


@dataclass
class Session:
    model: torch.nn.Module  # the global model at the round's start
    optimizer_state: dict  # the peer's inner optimizer after the earlier rounds
    data: torch.Tensor

    @property
    def base(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in trainable(self.model)]


@pytest.fixture(scope="module")
def session() -> Session:
    torch.manual_seed(0)
    data = torch.randint(0, VOCAB, (NUM_SAMPLES, SEQ + 1), generator=torch.Generator().manual_seed(1))
    model = build_model(ModelConfig(type="llama2", size="debug"), vocab_size=VOCAB, seq_length=SEQ, special={},
                        seed=3).train()
    optimizer = build_optimizer(model, TRAIN)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for step in range(3):  # earlier rounds: the optimizer has moments the replay must start from
        step_math(data).run(model, optimizer, scaler, HOOKS, step, torch.arange(step * BATCH, (step + 1) * BATCH))
    return Session(model, copy.deepcopy(optimizer.state_dict()), data)


def train_peer(session: Session, states: Path, inner_steps: int, commit_every: int, *, bad_step: int | None = None,
               cheat: str = "lr") -> Commitment:
    """One round of peer PEER as DilocoStrategy runs it: keep the state at each commit point, train on the shard,
    hash every k steps, commit. At 0-based inner step `bad_step` it trains with 10× the lr or on other samples."""
    model = copy.deepcopy(session.model)
    params = trainable(model)
    optimizer = build_optimizer(model, TRAIN)
    optimizer.load_state_dict(session.optimizer_state)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    base = session.base
    work = RoundWork(SESSION, PEER, shard_samples=SHARD, commit_every=commit_every, states=states)
    work.begin(ROUND, params_hash(base), NUM_SAMPLES, first_step=FIRST)
    for inner in range(inner_steps):
        if work.is_commit_point(inner, inner_steps):
            work.keep_state(inner, params, optimizer, scaler)
        indices = work.batch(inner, BATCH)
        math = step_math(session.data)
        if inner == bad_step and cheat == "lr":
            math = step_math(session.data, lr_scale=10.0)
        elif inner == bad_step:
            indices = (indices + 100) % NUM_SAMPLES
        math.run(model, optimizer, scaler, HOOKS, FIRST + inner, indices)
        work.after_inner_step(inner + 1, lambda: params_hash(params))
    update = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(base, params)])
    return work.commitment(tensor_digest(update), inner_steps, now=1.0)


def checker(session: Session, states: Path, commit_every: int, checks: int = 1) -> SpotChecker:
    """A validator whose own model holds other params (its own training moved on)."""
    model = copy.deepcopy(session.model)
    with torch.no_grad():
        for p in trainable(model):
            p.add_(0.01)

    def fetch(peer: str, round_: int, index: int) -> bytes | None:
        path = states / str(round_) / f"{index}.pt"
        return path.read_bytes() if peer == PEER and path.is_file() else None

    return SpotChecker(
        model, step_math(session.data), HOOKS, lambda m: build_optimizer(m, TRAIN),
        lambda: torch.amp.GradScaler("cpu", enabled=False), fetch, session_id=SESSION, num_samples=NUM_SAMPLES,
        shard_samples=SHARD, batch_size=BATCH, commit_every=commit_every, checks=checks, seed=5,
    )


def test_an_honest_peer_replays_exactly_and_the_validator_model_is_left_as_it_was(session, tmp_path):
    commitment = train_peer(session, tmp_path, inner_steps=6, commit_every=2)
    assert len(commitment.param_hashes) == 3 and commitment.first_step == FIRST
    assert sorted(p.name for p in (tmp_path / str(ROUND)).iterdir()) == ["0.pt", "2.pt", "4.pt"]
    spot = checker(session, tmp_path, commit_every=2, checks=2)
    own = [p.detach().clone() for p in trainable(spot.model)]
    rng = torch.get_rng_state()
    assert spot.check(commitment, session.base, picks=[0, 1, 2]) is None
    assert spot.replayed == 3
    assert spot.check(commitment, session.base) is None  # two random intervals
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(own, trainable(spot.model)))
    assert torch.equal(torch.get_rng_state(), rng)
    assert spot.seconds > 0


def test_a_shorter_last_interval_is_checked_against_the_committed_update(session, tmp_path):
    honest = train_peer(session, tmp_path / "honest", inner_steps=5, commit_every=2)
    assert len(honest.param_hashes) == 2
    assert checker(session, tmp_path / "honest", 2).check(honest, session.base, picks=[2]) is None
    cheat = train_peer(session, tmp_path / "cheat", inner_steps=5, commit_every=2, bad_step=4)
    failed = checker(session, tmp_path / "cheat", 2).check(cheat, session.base, picks=[2])
    assert failed is not None and failed.reason is Reason.SPOT_CHECK_FAIL
    assert "inner steps 5..5" in failed.detail and "an update" in failed.detail


@pytest.mark.parametrize("cheat", ["lr", "data"])
def test_one_step_with_another_lr_or_other_data_fails_at_its_interval(session, tmp_path, cheat):
    commitment = train_peer(session, tmp_path, inner_steps=6, commit_every=2, bad_step=3, cheat=cheat)
    spot = checker(session, tmp_path, 2)
    assert spot.check(commitment, session.base, picks=[0]) is None  # the interval before it reproduces
    failed = spot.check(commitment, session.base, picks=[1])
    assert failed is not None and failed.reason is Reason.SPOT_CHECK_FAIL
    assert "inner steps 3..4" in failed.detail and "do not reproduce" in failed.detail


def test_a_fault_found_later_is_bisected_to_the_first_interval_that_does_not_reproduce(session, tmp_path):
    """A peer that trained inner step 3 on other data: a check picking that interval names it (the one before it,
    bisected, reproduces). Served states that do not chain (optimizer moments the peer never trained from) make
    the later intervals fail too: a check picking the last bisects back to the first that does not reproduce."""
    commitment = train_peer(session, tmp_path, inner_steps=8, commit_every=2, bad_step=2, cheat="data")
    spot = checker(session, tmp_path, 2)
    failed = spot.check(commitment, session.base, picks=[1])
    assert failed is not None and "inner steps 3..4" in failed.detail
    for index in (4, 6):
        path = tmp_path / str(ROUND) / f"{index}.pt"
        state = load_round_state(path.read_bytes())
        state.optimizer["state"][0]["exp_avg"].mul_(3.0)  # optimizer state the params do not show
        save_round_state(tmp_path, state)
    spot = checker(session, tmp_path, 2)
    failed = spot.check(commitment, session.base, picks=[3])
    assert failed is not None and failed.reason is Reason.SPOT_CHECK_FAIL
    assert "inner steps 3..4" in failed.detail
    assert spot.replayed == 3  # interval 3, then 1 (bad) and 0 (good): log2 of the intervals, not all of them


def test_a_state_unlike_the_commitment_fails(session, tmp_path):
    commitment = train_peer(session, tmp_path, inner_steps=6, commit_every=2)

    def tamper(index: int) -> None:
        path = tmp_path / str(ROUND) / f"{index}.pt"
        state = load_round_state(path.read_bytes())
        state.params[0] = state.params[0] + 1e-3
        save_round_state(tmp_path, state)

    tamper(2)
    spot = checker(session, tmp_path, 2)
    later = spot.check(commitment, session.base, picks=[1])
    assert later is not None and later.reason is Reason.SPOT_CHECK_FAIL
    assert "after inner step 2" in later.detail and commitment.param_hashes[0][:12] in later.detail
    assert spot.replayed == 1  # only interval 0, bisected before it: it reproduces
    tamper(0)
    at_start = checker(session, tmp_path, 2).check(commitment, session.base, picks=[0])
    assert at_start is not None and at_start.reason is Reason.SPOT_CHECK_FAIL
    assert "at the round's start" in at_start.detail and "not to the" in at_start.detail


def test_a_state_with_other_optimizer_settings_fails(session, tmp_path):
    """A peer that trains with its own weight decay and serves states saying so does not reproduce the session's
    steps, even though its states replay to its hashes."""
    commitment = train_peer(session, tmp_path, inner_steps=4, commit_every=2)
    path = tmp_path / str(ROUND) / "2.pt"
    state = load_round_state(path.read_bytes())
    state.optimizer["param_groups"][0]["weight_decay"] = 0.0
    save_round_state(tmp_path, state)
    failed = checker(session, tmp_path, 2).check(commitment, session.base, picks=[1])
    assert failed is not None and failed.reason is Reason.SPOT_CHECK_FAIL and "optimizer settings" in failed.detail


def test_a_state_that_cannot_be_downloaded_is_late_and_a_commitment_of_the_wrong_shape_fails(session, tmp_path):
    commitment = train_peer(session, tmp_path, inner_steps=6, commit_every=2)
    (tmp_path / str(ROUND) / "4.pt").unlink()
    late = checker(session, tmp_path, 2).check(commitment, session.base, picks=[2])
    assert late is not None and late.reason is Reason.LATE
    (tmp_path / str(ROUND) / "2.pt").write_bytes(b"not a state")
    garbage = checker(session, tmp_path, 2).check(commitment, session.base, picks=[1])
    assert garbage is not None and garbage.reason is Reason.SPOT_CHECK_FAIL and "not a readable" in garbage.detail
    wrong = checker(session, tmp_path, 3).check(commitment, session.base)  # 6 steps hashed every 3: 2 hashes
    assert wrong is not None and wrong.reason is Reason.SPOT_CHECK_FAIL and "3 parameter hashes" in wrong.detail


def test_round_states_are_written_whole_and_only_two_rounds_are_kept(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for round_ in (1, 2, 3):
        for index in (0, 2):
            save_round_state(tmp_path, capture(round_, index, 10 * round_ + index, list(model.parameters()),
                                               optimizer, None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]
    assert not list(tmp_path.rglob("*.partial"))
    state = load_round_state((tmp_path / "3" / "2.pt").read_bytes())
    assert (state.round, state.index, state.step, state.scaler) == (3, 2, 32, None)
    assert torch.equal(state.params[0], model.weight.detach())
    with pytest.raises(BadRoundState, match="not a round state"):
        import io

        buffer = io.BytesIO()
        torch.save({"format": 99}, buffer)
        load_round_state(buffer.getvalue())


def test_spot_checks_apply_to_deterministic_cpu_sessions_only():
    config = CotrainConfig(train=TRAIN)
    assert spot_checks_apply(config)
    assert not spot_checks_apply(config.model_copy(update={"train": TRAIN.model_copy(update={"device": "auto"})}))
    assert not spot_checks_apply(CotrainConfig(train=TRAIN.model_copy(update={"deterministic": False})))
    off = config.model_copy(deep=True)
    off.distributed.diloco.spot_checks = 0
    assert not spot_checks_apply(off)
