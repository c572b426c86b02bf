"""A validator's spot check of a DiLoCo peer's round: replay some of its inner steps and compare the hashes.

For a session whose training is bit-exact (`train.deterministic` on the CPU, one process per peer), a peer's
committed parameter hashes (every k inner steps) can be reproduced by anyone holding the data. The check picks
`checks` random commit intervals of a peer that passed the round judge, downloads the peer's training state at
each interval's start (core/round_states.py, served by its averager), checks that state's params against the
commitment (the round's base params for the first interval), replays the interval's inner steps with the
trainer's own step math (core/inner_step.py) on the peer's shard batches at the peer's learning rates, and
compares the resulting params with the hash the peer committed at the interval's end (a last interval shorter
than k ends at the committed update: base − params).

A mismatch makes the round SPOT_CHECK_FAIL, naming the earliest interval that does not reproduce: the intervals
before the failing one are bisected (each probe is one replayed interval), so an interval named there did not
reproduce while every interval probed before it did. A state that cannot be downloaded makes it LATE (only the
round is lost).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cotrain.core.inner_step import StepHooks, StepMath
from cotrain.core.round_states import BadRoundState, RoundState, load_round_state
from cotrain.core.shards import shard_batch, shard_indices, shard_seed
from cotrain.core.strategies.diloco import params_hash
from cotrain.p2p.digests import tensor_digest
from cotrain.p2p.verification import Commitment, Reason

FetchState = Callable[[str, int, int], bytes | None]  # (peer, round, commit point) -> the state's bytes


def spot_checks_apply(config) -> bool:
    """Whether a session's inner steps are bit-exact, so replaying them can check a peer's hashes."""
    diloco = config.distributed.diloco
    return (config.train.deterministic and config.train.device == "cpu" and config.distributed.gpus_per_node == 1
            and diloco.spot_checks > 0)


@dataclass(frozen=True)
class Outcome:
    """A failed spot check: its reason (SPOT_CHECK_FAIL, or LATE when a state could not be downloaded) and one
    sentence."""

    reason: Reason
    detail: str


@dataclass(frozen=True)
class Interval:
    """Inner steps `start` (0-based, exclusive of the state) .. `end` of a round; `expected` is the hash committed
    at its end, or None when it ends at the committed update instead."""

    index: int
    start: int
    end: int
    expected: str | None

    @property
    def steps(self) -> str:
        return f"inner steps {self.start + 1}..{self.end}"


class SpotChecker:
    """Spot checks of the peers of one session. `model` is replayed on (its trainable params are restored after
    every replay); `make_optimizer(model)` builds an inner optimizer like the peers' and `make_scaler()` a grad
    scaler; `samples` maps sample indices to the training split's tokens of `num_samples` samples."""

    def __init__(self, model: nn.Module, step_math: StepMath, hooks: StepHooks,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                 make_scaler: Callable[[], torch.amp.GradScaler], fetch: FetchState, *, session_id: str,
                 num_samples: int, shard_samples: int, batch_size: int, commit_every: int, checks: int = 1,
                 seed: int | None = None):
        self.model, self.step_math, self.hooks = model, step_math, hooks
        self.make_optimizer, self.make_scaler, self.fetch = make_optimizer, make_scaler, fetch
        self.session_id, self.num_samples = session_id, num_samples
        self.shard_samples, self.batch_size = min(shard_samples, num_samples), batch_size
        self.commit_every, self.checks = commit_every, checks
        self.random = random.Random(seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.seconds = 0.0  # CPU seconds of the checks so far
        self.replayed = 0  # intervals replayed so far

    # --- the check -----------------------------------------------------------------------------------
    def check(self, c: Commitment, base_params: list[torch.Tensor], picks: list[int] | None = None) -> Outcome | None:
        """None when the picked intervals of `c`'s round reproduce, else why not. `picks` (interval numbers)
        replaces the random choice."""
        started = time.process_time()
        try:
            return self._check(c, base_params, picks)
        finally:
            self.seconds += time.process_time() - started

    def _check(self, c: Commitment, base_params: list[torch.Tensor], picks: list[int] | None) -> Outcome | None:
        intervals = self.intervals(c)
        if intervals is None:
            return Outcome(Reason.SPOT_CHECK_FAIL, (
                f"its commitment lists {len(c.param_hashes)} parameter hashes where {c.inner_steps} inner steps "
                f"hashed every {self.commit_every} make {c.inner_steps // self.commit_every}."))
        if picks is None:
            picks = self.random.sample(range(len(intervals)), min(self.checks, len(intervals)))
        size = min(c.shard_size(self.shard_samples, self.batch_size), self.num_samples)
        shard = shard_indices(self.num_samples, size, shard_seed(self.session_id, c.round, c.base_hash, c.peer_id))
        results: dict[int, Outcome | None] = {}

        def outcome(i: int) -> Outcome | None:
            if i not in results:
                results[i] = self._interval(c, intervals[i], shard, base_params)
            return results[i]

        for i in sorted(picks):
            failed = outcome(i)
            if failed is None:
                continue
            if failed.reason is Reason.LATE:
                return failed
            lo, hi = 0, i  # bisect the intervals before the failing one `hi`
            while lo < hi:
                mid = (lo + hi) // 2
                probed = outcome(mid)
                if probed is not None and probed.reason is Reason.LATE:
                    break  # the earlier states are not there: name the failure already found
                if probed is None:
                    lo = mid + 1
                else:
                    hi = mid
            first = results[hi]
            assert first is not None
            return first
        return None

    def intervals(self, c: Commitment) -> list[Interval] | None:
        """The round's commit intervals (None when the commitment's hashes do not fit its inner steps)."""
        k, steps = self.commit_every, c.inner_steps
        if len(c.param_hashes) != steps // k:
            return None
        found = [Interval(i, i * k, (i + 1) * k, c.param_hashes[i]) for i in range(steps // k)]
        if steps % k:
            found.append(Interval(len(found), len(found) * k, steps, None))
        return found

    # --- one interval ------------------------------------------------------------------------------
    def _interval(self, c: Commitment, interval: Interval, shard: torch.Tensor,
                  base_params: list[torch.Tensor]) -> Outcome | None:
        at = interval.start
        data = self.fetch(c.peer_id, c.round, at)
        if data is None:
            return Outcome(Reason.LATE, f"its training state after inner step {at} could not be downloaded.")
        fail = _failing(f"after inner step {at}" if at else "at the round's start")
        try:
            state = load_round_state(data)
        except BadRoundState as exc:
            return fail(f"is not a training state: {exc}")
        if (state.round, state.index, state.step) != (c.round, at, c.first_step + at):
            return fail(f"is that of round {state.round}, inner step {state.index}, global step {state.step}")
        if [tuple(p.shape) for p in state.params] != [tuple(p.shape) for p in self.params]:
            return fail("does not fit this model")
        if at == 0:
            expected_start = params_hash([b.to(p.dtype) for b, p in zip(base_params, self.params)])
        else:
            expected_start = c.param_hashes[interval.index - 1]
        start_hash = params_hash(state.params)
        if start_hash != expected_start:
            return fail(f"hashes to {start_hash[:12]}, not to the {expected_start[:12]} it committed")
        try:
            with self._replaying(state):
                optimizer = self.make_optimizer(self.model)
                settings = _settings(optimizer.state_dict())
                optimizer.load_state_dict(state.optimizer)
                if _settings(optimizer.state_dict()) != settings:  # a peer's own betas or weight decay, say
                    return fail(f"holds optimizer settings {_settings(state.optimizer)!r:.200}, not the session's "
                                f"{settings!r:.200}")
                scaler = self.make_scaler()
                if state.scaler:
                    scaler.load_state_dict(state.scaler)
                for inner in range(interval.start, interval.end):
                    indices = shard_batch(shard, inner, c.samples_per_step(self.batch_size))
                    self.step_math.run(self.model, optimizer, scaler, self.hooks, c.first_step + inner, indices)
                self.replayed += 1
                return self._compare(c, interval, base_params)
        except (ValueError, KeyError, RuntimeError, IndexError) as exc:  # an optimizer state of another shape
            return fail(f"cannot be replayed ({type(exc).__name__}: {str(exc)[:120]})")

    def _compare(self, c: Commitment, interval: Interval, base_params: list[torch.Tensor]) -> Outcome | None:
        if interval.expected is not None:
            got, expected = params_hash(self.params), interval.expected
        else:  # the last, shorter interval ends at the committed update
            flat = torch.cat([(b - p.detach().to("cpu", torch.float32)).reshape(-1)
                              for b, p in zip(base_params, self.params)])
            got, expected = tensor_digest(flat), c.update_hash
        if got == expected:
            return None
        what = "params" if interval.expected is not None else "an update"
        return Outcome(Reason.SPOT_CHECK_FAIL, (
            f"replaying its {interval.steps} from the state it committed gives {what} hashed {got[:12]}, "
            f"not the {expected[:12]} it committed: those steps do not reproduce."))

    @contextlib.contextmanager
    def _replaying(self, state: RoundState) -> Iterator[None]:
        """The model set to the state's params in train mode, under the state's RNG; all restored afterwards."""
        saved = [p.detach().clone() for p in self.params]
        training = self.model.training
        try:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state.rng)
                with torch.no_grad():
                    for param, value in zip(self.params, state.params):
                        param.copy_(value)
                self.model.train()
                yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved):
                    param.copy_(value)
                    param.grad = None
            self.model.train(training)


def _settings(optimizer_state: dict) -> list[dict]:
    """An optimizer state_dict's hyperparameters per param group (the learning rate is set by every step)."""
    return [{k: v for k, v in group.items() if k not in ("params", "lr")}
            for group in optimizer_state.get("param_groups", [])]


def _failing(where: str) -> Callable[[str], Outcome]:
    def fail(what: str) -> Outcome:
        return Outcome(Reason.SPOT_CHECK_FAIL, f"the training state it served {where} {what}.")

    return fail
