"""What a DiLoCo peer does so that its rounds can be checked, and what a validating peer does to check them
(docs/architecture.md, "Verified contributions").

A peer, in every round r (`RoundWork`):
- trains its inner steps only on its round shard, drawn from a public seed of (session, r, the hash of the
  global params the round starts from, its peer id): anyone holding the data can recompute its samples;
- records the hash of its local params every `commit_every` inner steps, and (when a validator can replay its
  steps: core/spot_check.py) keeps its training state at those commit points (core/round_states.py);
- before averaging, keeps its pseudo-gradient in its averager (others may download it) and publishes a
  signed commitment naming the update's digest, its shard and those hashes;
- after a successful all-reduce, publishes a signed receipt naming the group's members and the digests of
  the updates they averaged.

A validating peer (`distributed.diloco.validate = true`; the server's own engine peer of a rewarded
session), after each round it applied (`RoundValidator`): reads the round's commitments and receipts from
the DHT, downloads the members' updates, and lets `core.validation.RoundJudge` give every member a
reason code. The verdicts leave the engine as a `verdict` event; the server pays only verified rounds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cotrain.core.shards import shard_batch, shard_id, shard_indices, shard_seed
from cotrain.p2p.verification import Commitment, Reason, Receipt, Verdict

if TYPE_CHECKING:
    from cotrain.core.spot_check import SpotChecker

log = logging.getLogger(__name__)

RECEIPT_WAIT = 5.0  # seconds a validator waits for the other members' receipts of a round it took part in
DOWNLOAD_TIMEOUT = 10.0  # seconds for one member's update


@dataclass
class RoundWork:
    """This peer's public shard and parameter hashes for the round it is training."""

    session_id: str
    peer_id: str
    shard_samples: int
    commit_every: int
    batch_size: int = 0  # this peer's samples per inner step (in its commitment)
    round: int = 0
    base_hash: str = ""
    seed: int = 0
    indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    param_hashes: list[str] = field(default_factory=list)
    first_step: int = 0  # global 0-based step of the round's first inner step
    states: Path | None = None  # where this peer keeps its training state at commit points (spot checks on)

    def seed_for(self, round_: int, base_hash: str) -> int:
        return shard_seed(self.session_id, round_, base_hash, self.peer_id)

    def begin(self, round_: int, base_hash: str, num_samples: int, seed: int | None = None,
              first_step: int = 0) -> None:
        """Start round `round_` from the global params hashed `base_hash`; its first inner step is global step
        `first_step`. `seed` is given on a peer's other local processes (rank 0 computes it: only it knows the
        peer id and the hash)."""
        self.round, self.base_hash, self.first_step = round_, base_hash, first_step
        self.seed = self.seed_for(round_, base_hash) if seed is None else seed
        self.indices = shard_indices(num_samples, self.shard_samples, self.seed)
        self.param_hashes = []

    def batch(self, inner_step: int, batch_size: int) -> torch.Tensor:
        return shard_batch(self.indices, inner_step, batch_size)

    def after_inner_step(self, inner_done: int, params_hash: Callable[[], str]) -> None:
        if inner_done % self.commit_every == 0:
            self.param_hashes.append(params_hash())

    def is_commit_point(self, inner_done: int, inner_steps: int) -> bool:
        """Whether a replay may start after `inner_done` inner steps (the round's start, every k-th step)."""
        return inner_done < inner_steps and inner_done % self.commit_every == 0

    def keep_state(self, inner_done: int, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None) -> None:
        """Keep this peer's training state after `inner_done` inner steps of the round, for spot checks."""
        from cotrain.core.round_states import capture, save_round_state

        if self.states is None:
            return
        state = capture(self.round, inner_done, self.first_step + inner_done, params, optimizer, scaler)
        try:
            save_round_state(self.states, state)
        except OSError as exc:  # a state that is not kept fails its spot check (late), not the run
            log.warning("could not keep the training state of round %d after %d inner steps: %s",
                        self.round, inner_done, exc)

    def commitment(self, update_hash: str, inner_steps: int, now: float) -> Commitment:
        return Commitment(
            peer_id=self.peer_id, session_id=self.session_id, round=self.round, base_hash=self.base_hash,
            update_hash=update_hash, shard_id=shard_id(self.session_id, self.round, self.base_hash, self.peer_id),
            inner_steps=inner_steps, param_hashes=tuple(self.param_hashes[-1024:]), committed_at=now,
            first_step=self.first_step, batch_size=self.batch_size, shard_samples=self.shard_samples,
        )


def receipt_of(session_id: str, round_: int, peer_id: str, gathered: dict[Any, Any], result_hash: str,
               now: float) -> Receipt:
    """The receipt this peer signs after a successful all-reduce: the group's members (from the gathered
    metadata: each member's own word for its update digest) and the digest of the averaged result."""
    members = {}
    for member, metadata in gathered.items():
        update = metadata.get("update") if isinstance(metadata, dict) else None
        members[str(member)] = update if isinstance(update, str) and len(update) <= 128 else ""
    return Receipt(peer_id=peer_id, session_id=session_id, round=round_, members=members,
                   result_hash=result_hash, signed_at=now)


class RoundValidator:
    """Collects one round's evidence from the DHT and the members' averagers and judges it."""

    def __init__(self, dht, averager, session_id: str, peer_id: str, judge_factory: Callable[..., Any],
                 audit_fraction: float = 1.0, spot_checker: SpotChecker | None = None):
        self.dht, self.averager = dht, averager
        self.session_id, self.peer_id = session_id, peer_id
        self.judge_factory = judge_factory
        self.spot_checker = spot_checker  # replays some inner steps of every audited member that passed the judge
        self.spot_checked = 0  # peer-rounds spot-checked
        self.audit_fraction = audit_fraction
        self._draw = random.SystemRandom()  # which members are audited must not be predictable by them
        self.seconds = 0.0  # wall seconds spent validating (with the wait for receipts)
        self.judged = 0  # peer-rounds judged

    def judge_round(self, round_: int, base_hash: str, base_params: list[torch.Tensor], gathered: dict[Any, Any],
                    own_update: torch.Tensor, live_peers: Iterable[str]) -> dict[str, Any]:
        """The `verdict` event of round `round_`: every member of the group, every peer that committed, and
        every live peer (one that publishes progress but never averages is judged too)."""
        from hivemind.utils import get_dht_time

        from cotrain.core.validation import RoundEvidence
        from cotrain.p2p.round_records import fetch_commitments, fetch_receipts

        started, cpu_started = time.perf_counter(), time.process_time()
        deadline = get_dht_time()
        group = {str(member) for member in gathered}
        receipts = self._receipts(round_, group, fetch_receipts)
        commitments = fetch_commitments(self.dht, self.session_id, round_)
        members = group | set(commitments) | set(live_peers) | {self.peer_id}
        updates: dict[str, torch.Tensor | None] = {}
        for member in sorted(members):
            if member in commitments and self._draw.random() < self.audit_fraction:
                updates[member] = own_update if member == self.peer_id else self._download(member, round_)
        evidence = RoundEvidence(round=round_, base_hash=base_hash, receipts=receipts, commitments=commitments,
                                 updates=updates, deadline=deadline, members=members)
        verdicts = self.judge_factory(base_params).judge(evidence)
        if self.spot_checker is not None:
            verdicts = [self._spot_check(v, commitments, updates, base_params) for v in verdicts]
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        self.seconds += seconds
        self.judged += len(verdicts)
        return {
            "round": round_, "validator": self.peer_id, "deadline": deadline, "base_hash": base_hash,
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "verdicts": [v.as_dict() for v in verdicts],
            # what the verdicts were drawn from, for anyone who checks them later (cotrain verify-session)
            "evidence": {"commitments": {p: c.as_dict() for p, c in sorted(commitments.items())},
                         "receipts": {p: r.as_dict() for p, r in sorted(receipts.items())}},
        }

    def _spot_check(self, verdict: Verdict, commitments: dict[str, Commitment], audited: dict[str, Any],
                    base_params: list[torch.Tensor]) -> Verdict:
        """An audited member's verdict after its spot check, when the judge verified it (this peer does not
        check its own rounds)."""
        assert self.spot_checker is not None
        peer = verdict.peer_id
        if verdict.reason is not Reason.VERIFIED or peer == self.peer_id or audited.get(peer) is None:
            return verdict
        before = self.spot_checker.seconds
        try:
            failed = self.spot_checker.check(commitments[peer], base_params)
        except Exception as exc:  # this validator's own fault: the member keeps the judge's verdict
            log.warning("could not spot-check %s in round %d: %r", peer, verdict.round, exc)
            return verdict
        self.spot_checked += 1
        scores = {**verdict.scores, "spot_check_seconds": round(self.spot_checker.seconds - before, 4)}
        if failed is None:
            return replace(verdict, scores=scores)
        return replace(verdict, reason=failed.reason, detail=failed.detail, scores=scores, tokens=0)

    def _receipts(self, round_: int, group: set[str], fetch_receipts) -> dict[str, Receipt]:
        """The round's receipts, waiting (at most RECEIPT_WAIT) for one from every member of our group."""
        deadline = time.monotonic() + RECEIPT_WAIT
        while True:
            receipts = fetch_receipts(self.dht, self.session_id, round_)
            if group <= set(receipts) or time.monotonic() > deadline:
                return receipts
            time.sleep(0.2)

    def _download(self, member: str, round_: int) -> torch.Tensor | None:
        try:
            got = self.averager.download_update(member, timeout=DOWNLOAD_TIMEOUT, round_=round_)
        except Exception as exc:  # an unreachable member is judged on what it could show: nothing
            log.warning("could not download the update of %s for round %d: %s", member, round_, exc)
            return None
        if got is None:
            return None
        kept_round, update = got
        return update if kept_round == round_ else None

