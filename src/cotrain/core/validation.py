"""Judging one DiLoCo round: did each member do the work it committed to? (docs: "The validator").

Pure scoring, no DHT: the caller gathers the round's evidence (commitments, receipts, the downloaded
updates) and `RoundJudge.judge` returns one `Verdict` per member. Checks, in order, the first that
fails names the reason: a commitment for this round (NO_COMMIT), made before the deadline (LATE),
vouched for by `receipt_quorum` receipts of other members (NOT_IN_GROUP), the update it serves is
the one it committed (SPOT_CHECK_FAIL), finite and not implausibly large (NON_FINITE), and that it
trained on its own shard (OWN_DATA_FAIL, or DUPLICATE_UPDATE when it copied another member's update).

The own-data test: the model set to base − update must lower the loss on the peer's round shard
(recomputed from its public seed) more than on a control shard that no peer was given. The drops
are measured per chunk of samples (base loss − updated loss on the same chunk), so the difference
also gets a standard error: it must exceed `own_data_margin` and `own_data_z` standard errors, and
the own-shard drop must be positive. A peer that trained on other data, sent noise or nothing
lowers both shards alike; an honest peer also memorises a little of what it saw.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from cotrain.core.shards import random_shard_seed, shard_indices, shard_seed
from cotrain.core.strategies.diloco import params_hash
from cotrain.p2p.digests import tensor_digest
from cotrain.p2p.verification import MAX_DETAIL, MAX_SCORE, Commitment, Reason, Receipt, Verdict, round_tokens

LossOf = Callable[[nn.Module, torch.Tensor], float]  # mean token loss of one batch of samples
Samples = Callable[[torch.Tensor], torch.Tensor]  # sample indices -> token tensor (TokenSamples.get)
HeldOut = torch.Tensor | Callable[[], torch.Tensor]

MAX_EVAL_SAMPLES = 64
CONFIRM_SAMPLES = 512  # samples of a failing update's shard (and of the control shard) measured again
OWN_DATA_Z = 3.0
DUPLICATE_COSINE = 0.999
MIN_CHUNKS = 8  # drops measured on at least this many chunks when the eval set allows, for the standard error


@dataclass
class RoundEvidence:
    """What the validator gathered about round `round`. `deadline` is DHT time: a commitment made
    after it is late. `updates[peer]` is None when its update could not be downloaded."""

    round: int
    base_hash: str
    receipts: dict[str, Receipt]
    commitments: dict[str, Commitment]
    updates: dict[str, torch.Tensor | None]
    deadline: float
    members: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Drops:
    """Loss drops (base loss − loss at base − update) of one update."""

    own: float
    control: float
    held_out: float | None
    z: float | None  # (own − control) / its standard error; None with too few chunks to tell

    @property
    def own_data(self) -> float:
        return self.own - self.control


@dataclass
class _Candidate:
    commitment: Commitment
    flat: torch.Tensor
    norm: float


class RoundJudge:
    """Judges the members of one round that started from `base_params` (the global params, fp32 CPU,
    in `model.parameters()` order of those that require grad: the averager's flat layout).

    `loss_of(model, tokens)` must be deterministic (same batch, same params → same loss). `heldout`
    (a token tensor, or a callable returning one) gives the usefulness score (held-out loss drop).
    The own-shard drop is measured on at most `max_eval_samples` of the shard, a subset drawn with
    `eval_seed` (random by default, so a peer cannot know which of its samples will be checked)."""

    def __init__(
        self,
        model: nn.Module,
        base_params: list[torch.Tensor],
        loss_of: LossOf,
        samples: Samples,
        num_samples: int,
        shard_samples: int,
        batch_size: int,
        session_id: str,
        receipt_quorum: int = 1,
        own_data_margin: float = 0.0,
        max_update_norm: float = math.inf,
        *,
        seq_length: int,
        heldout: HeldOut | None = None,
        max_eval_samples: int = MAX_EVAL_SAMPLES,
        confirm_samples: int = CONFIRM_SAMPLES,
        own_data_z: float = OWN_DATA_Z,
        duplicate_cosine: float = DUPLICATE_COSINE,
        eval_seed: int | None = None,
    ):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if [tuple(p.shape) for p in self.params] != [tuple(b.shape) for b in base_params]:
            raise ValueError("base_params do not match the model's trainable parameters")
        # a copy: the caller's global params move on with the next outer step while a round is judged
        self.base_params = [b.detach().to("cpu", torch.float32, copy=True) for b in base_params]
        self.base_hash = params_hash(self.base_params)
        self.numel = sum(b.numel() for b in self.base_params)
        self.loss_of, self.samples = loss_of, samples
        self.num_samples, self.shard_samples = num_samples, min(shard_samples, num_samples)
        self.batch_size, self.seq_length, self.session_id = batch_size, seq_length, session_id
        self.receipt_quorum, self.own_data_margin = receipt_quorum, own_data_margin
        self.max_update_norm = max_update_norm
        self.own_data_z, self.duplicate_cosine = own_data_z, duplicate_cosine
        self.eval_samples = max(1, min(self.shard_samples, max_eval_samples))
        self.chunk = max(1, min(batch_size, self.eval_samples // MIN_CHUNKS))
        self.confirm_samples = confirm_samples
        self.eval_seed = secrets.randbits(62) if eval_seed is None else eval_seed
        self._heldout = heldout
        self._base_losses: dict[str, list[tuple[float, int]]] = {}  # control / held-out chunks at the base params

    # --- the verdicts --------------------------------------------------------------------------
    def judge(self, evidence: RoundEvidence) -> list[Verdict]:
        """One verdict per member of `evidence.members`, sorted by peer id."""
        if evidence.base_hash != self.base_hash:
            raise ValueError(
                f"this judge holds base params {self.base_hash}, the round started from {evidence.base_hash}"
            )
        verdicts: dict[str, Verdict] = {}
        candidates: dict[str, _Candidate] = {}
        for peer in sorted(evidence.members):
            screened = self._screen(peer, evidence)
            if isinstance(screened, Verdict):
                verdicts[peer] = screened
            else:
                candidates[peer] = screened
        drops = self._measure(evidence.round, candidates)
        failing = {peer: c for peer, c in candidates.items() if not self._passes(drops[peer])}
        if failing and self.confirm_samples > self.eval_samples:
            # a failure costs the peer its round and its place in the groups: before saying so, measure again on
            # more of its shard (an honest update's advantage grows with the samples; a cheat's stays at noise)
            with self._sample_size(self.confirm_samples):
                drops.update(self._measure(evidence.round, failing))
        copies = self._copies(candidates)
        for peer, candidate in candidates.items():
            twin = copies.get(peer)
            twin_at = None if twin is None else candidates[twin[0]].commitment.committed_at
            if twin is not None and twin_at is not None and twin_at < candidate.commitment.committed_at:
                # the same update, committed after another member's: the copy, whatever its loss drops say
                verdicts[peer] = self._copy_verdict(evidence.round, peer, candidate, drops[peer], twin)
            else:  # the first of its kind is judged on its own data; of twins committed at once, the one failing it
                same_time = twin if twin_at == candidate.commitment.committed_at else None
                verdicts[peer] = self._own_data_verdict(evidence.round, peer, candidate, drops[peer], same_time)
        return [verdicts[peer] for peer in sorted(verdicts)]

    def _verdict(self, round_: int, peer: str, reason: Reason, detail: str, scores: dict[str, float] | None = None,
                 tokens: int = 0) -> Verdict:
        finite = {k: float(v) for k, v in (scores or {}).items() if math.isfinite(v) and abs(v) <= MAX_SCORE}
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 2] + "…."
        return Verdict(
            session_id=self.session_id, round=round_, peer_id=peer, reason=reason, detail=detail, scores=finite,
            tokens=tokens,
        )

    def _screen(self, peer: str, ev: RoundEvidence) -> Verdict | _Candidate:
        """The checks before any loss is computed: a verdict, or the update to evaluate."""
        r = ev.round
        c = ev.commitments.get(peer)
        if c is None:
            return self._verdict(r, peer, Reason.NO_COMMIT, f"it published no commitment for round {r}.")
        wrong = _mismatch(c, peer, self.session_id, r, ev.base_hash)
        if wrong:
            return self._verdict(r, peer, Reason.NO_COMMIT, f"its commitment is not one for round {r}: {wrong}.")
        if c.committed_at > ev.deadline:
            late = c.committed_at - ev.deadline
            return self._verdict(r, peer, Reason.LATE, f"it committed {late:.1f} s after the round's deadline.")
        # an audited update is checked first: an absurd one makes the honest members refuse the round (no
        # receipts), and it must be named for what it is, not merely as out of the group
        candidate = self._check_update(r, peer, c, ev.updates[peer]) if peer in ev.updates else None
        if isinstance(candidate, Verdict):
            return candidate
        vouching = [
            signer for signer, receipt in ev.receipts.items()
            if signer != peer and signer in ev.members and receipt.session_id == self.session_id
            and receipt.round == r and receipt.members.get(peer) == c.update_hash
        ]
        if len(vouching) < self.receipt_quorum:
            return self._verdict(
                r, peer, Reason.NOT_IN_GROUP,
                f"{len(vouching)} of the {self.receipt_quorum} receipts needed from other group members name its "
                f"committed update {c.update_hash[:12]}.",
            )
        first = _committed_first(c, peer, ev)
        if first is not None:
            return self._verdict(
                r, peer, Reason.DUPLICATE_UPDATE,
                f"its committed update is byte for byte peer {first}'s, which committed it first.",
            )
        if candidate is None:  # not drawn for this round's audit: what was checked is all that could be
            return self._verdict(
                r, peer, Reason.VERIFIED,
                f"not audited this round: it committed in time and {len(vouching)} other group member(s) "
                "received its committed update.",
                tokens=round_tokens(c, self.batch_size, self.seq_length),
            )
        return candidate

    def _check_update(self, r: int, peer: str, c: Commitment, update: torch.Tensor | None) -> Verdict | _Candidate:
        """An audited member's downloaded update: the one it committed, finite and of a sane size."""
        if update is None:  # gone or slow, not caught lying: only this round is lost (a mismatch below is lying)
            return self._verdict(r, peer, Reason.LATE, "its committed update could not be downloaded in time.")
        flat = update.detach().to("cpu", torch.float32).reshape(-1).contiguous()
        digest = tensor_digest(flat)
        if digest != c.update_hash:
            return self._verdict(
                r, peer, Reason.SPOT_CHECK_FAIL,
                f"the update it served hashes to {digest[:12]}, not to the {c.update_hash[:12]} it committed.",
            )
        if flat.numel() != self.numel:
            return self._verdict(
                r, peer, Reason.SPOT_CHECK_FAIL, f"its update has {flat.numel()} values but the model has {self.numel}."
            )
        bad = int((~torch.isfinite(flat)).sum())
        if bad:
            return self._verdict(r, peer, Reason.NON_FINITE, f"its update holds {bad} NaN or infinite values.")
        norm = float(torch.linalg.vector_norm(flat))
        if not norm <= self.max_update_norm:
            return self._verdict(
                r, peer, Reason.NON_FINITE,
                f"its update's norm {norm:.4g} exceeds the limit {self.max_update_norm:.4g}.", {"norm": norm},
            )
        return _Candidate(c, flat, norm)

    @staticmethod
    def _scores(candidate: _Candidate, d: Drops) -> dict[str, float]:
        scores = {"own_drop": d.own, "control_drop": d.control, "own_data": d.own_data, "norm": candidate.norm}
        if d.held_out is not None:
            scores["usefulness"] = d.held_out
        if d.z is not None:
            scores["own_data_z"] = d.z
        return scores

    def _copy_verdict(
        self, round_: int, peer: str, candidate: _Candidate, d: Drops, twin: tuple[str, float]
    ) -> Verdict:
        other, cosine = twin
        return self._verdict(
            round_, peer, Reason.DUPLICATE_UPDATE,
            f"its update is the same as peer {other}'s (cosine {cosine:.4f}), which committed it first.",
            self._scores(candidate, d),
        )

    def _own_data_verdict(self, round_: int, peer: str, candidate: _Candidate, d: Drops,
                          copy_of: tuple[str, float] | None) -> Verdict:
        scores = self._scores(candidate, d)
        moved = f"{_moved(d.own, 'on its own shard')} and {_moved(d.control, 'on a control shard')}"
        lowered = f"its update {moved}"
        if self._passes(d):
            useful = "" if d.held_out is None else f"; it {_moved(d.held_out, 'on held-out data')}"
            tokens = round_tokens(candidate.commitment, self.batch_size, self.seq_length)
            return self._verdict(round_, peer, Reason.VERIFIED, f"{lowered}{useful}.", scores, tokens)
        if copy_of is not None:
            other, cosine = copy_of
            return self._verdict(
                round_, peer, Reason.DUPLICATE_UPDATE,
                f"its update is the same as peer {other}'s (cosine {cosine:.4f}) and {moved}: "
                "it did not train on its own shard.",
                scores,
            )
        z = "" if d.z is None else f" (a difference of {d.z:.2g} standard errors)"
        return self._verdict(
            round_, peer, Reason.OWN_DATA_FAIL,
            f"{lowered}{z}: it did not train on the data it was given.", scores,
        )

    def _passes(self, d: Drops) -> bool:
        significant = d.z is None or d.z >= self.own_data_z
        return d.own > 0 and d.own_data > self.own_data_margin and significant

    # --- duplicates ------------------------------------------------------------------------------
    def _copies(self, candidates: dict[str, _Candidate]) -> dict[str, tuple[str, float]]:
        """peer → (the member that committed first among those whose update is the same as the peer's or nearly
        so, cosine)."""
        peers = sorted(candidates)
        copies: dict[str, tuple[str, float]] = {}
        for i, a in enumerate(peers):
            for b in peers[i + 1:]:
                x, y = candidates[a], candidates[b]
                if x.commitment.update_hash == y.commitment.update_hash:
                    cosine = 1.0
                elif x.norm > 0 and y.norm > 0:
                    cosine = float(torch.dot(x.flat, y.flat)) / (x.norm * y.norm)
                else:
                    continue
                if cosine > self.duplicate_cosine:
                    for peer, twin in ((a, b), (b, a)):
                        known = copies.get(peer)
                        if known is None or candidates[twin].commitment.committed_at < \
                                candidates[known[0]].commitment.committed_at:
                            copies[peer] = (twin, cosine)
        return copies

    # --- losses ----------------------------------------------------------------------------------
    def _measure(self, round_: int, candidates: dict[str, _Candidate]) -> dict[str, Drops]:
        if not candidates:
            return {}
        control = self._control_indices(round_)
        with self._evaluating():
            self._load(None)
            base_control = self._cached(f"control/{round_}/{self.eval_samples}", lambda: self._chunk_losses(control))
            base_heldout = self._cached("heldout", self._heldout_losses) if self._heldout is not None else None
            drops = {}
            for peer in sorted(candidates):
                own = self._own_indices(round_, peer, candidates[peer].commitment)
                self._load(None)
                base_own = self._chunk_losses(own)
                self._load(candidates[peer].flat)
                own_drops = _drops(base_own, self._chunk_losses(own))
                control_drops = _drops(base_control, self._chunk_losses(control))
                held_out = None
                if base_heldout is not None:
                    held_out = _mean(_drops(base_heldout, self._heldout_losses()))
                drops[peer] = Drops(_mean(own_drops), _mean(control_drops), held_out, _z(own_drops, control_drops))
        return drops

    def _own_indices(self, round_: int, peer: str, c: Commitment) -> torch.Tensor:
        seed = shard_seed(self.session_id, round_, self.base_hash, peer)
        size = min(c.shard_size(self.shard_samples, self.batch_size), self.num_samples)
        shard = shard_indices(self.num_samples, size, seed)
        return _subset(shard, self.eval_samples, self.eval_seed ^ shard_seed(self.session_id, round_, "eval", peer))

    def _control_indices(self, round_: int) -> torch.Tensor:
        seed = random_shard_seed(self.session_id, round_, self.base_hash)
        return shard_indices(self.num_samples, self.shard_samples, seed)[: self.eval_samples]

    @contextlib.contextmanager
    def _sample_size(self, samples: int) -> Iterator[None]:
        """Measure on up to `samples` samples of each shard (chunks sized to match) inside the block."""
        saved = self.eval_samples, self.chunk
        self.eval_samples = max(1, min(self.shard_samples, samples))
        self.chunk = max(1, min(self.batch_size, self.eval_samples // MIN_CHUNKS))
        try:
            yield
        finally:
            self.eval_samples, self.chunk = saved

    def _cached(self, key: str, compute: Callable[[], list[tuple[float, int]]]) -> list[tuple[float, int]]:
        if key not in self._base_losses:
            self._base_losses[key] = compute()
        return self._base_losses[key]

    def _chunk_losses(self, indices: torch.Tensor) -> list[tuple[float, int]]:
        """(mean loss, samples) of each chunk of `indices`."""
        return [self._loss(self.samples(part)) for part in indices.split(self.chunk)]

    def _heldout_losses(self) -> list[tuple[float, int]]:
        if callable(self._heldout):
            self._heldout = self._heldout()
        assert isinstance(self._heldout, torch.Tensor)
        return [self._loss(part) for part in self._heldout.split(self.chunk)]

    def _loss(self, tokens: torch.Tensor) -> tuple[float, int]:
        return float(self.loss_of(self.model, tokens.to(self.params[0].device))), len(tokens)

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """no_grad and eval mode; the model's params and train mode restored afterwards."""
        saved = [p.detach().clone() for p in self.params]
        training = self.model.training
        try:
            with torch.no_grad():
                self.model.eval()
                yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved):
                    param.copy_(value)
            self.model.train(training)

    def _load(self, flat: torch.Tensor | None) -> None:
        """Set the model's params to base − `flat` (the base itself when None)."""
        offset = 0
        for param, base in zip(self.params, self.base_params):
            if flat is None:
                param.copy_(base)
            else:
                param.copy_(base - flat[offset: offset + base.numel()].view_as(base))
            offset += base.numel()


def _moved(drop: float, where: str) -> str:
    """'lowered the loss on X by 0.1' for a drop, 'raised the loss on X by 0.1' for a rise."""
    return f"lowered the loss {where} by {drop:.3g}" if drop >= 0 else f"raised the loss {where} by {-drop:.3g}"


def _committed_first(c: Commitment, peer: str, ev: RoundEvidence) -> str | None:
    """Another member that committed the very same update digest strictly before `peer` did (a copy needs to
    see what it copies), known from the commitments alone."""
    earlier = [(other.committed_at, name) for name, other in ev.commitments.items()
               if name != peer and name in ev.members and other.update_hash == c.update_hash
               and other.committed_at < c.committed_at]
    return min(earlier)[1] if earlier else None


def _mismatch(c: Commitment, peer: str, session_id: str, round_: int, base_hash: str) -> str:
    if c.peer_id != peer:
        return f"it names peer {c.peer_id}"
    if c.session_id != session_id:
        return f"it names session {c.session_id}"
    if c.round != round_:
        return f"it names round {c.round}"
    if c.base_hash != base_hash:
        return f"it starts from params {c.base_hash}, the round started from {base_hash}"
    return ""


def _subset(indices: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    if count >= len(indices):
        return indices
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed & (2**63 - 1)))
    return indices[order[:count].sort().values]


def _drops(base: list[tuple[float, int]], updated: list[tuple[float, int]]) -> list[tuple[float, int]]:
    return [(b - u, n) for (b, n), (u, _) in zip(base, updated)]


def _mean(chunks: list[tuple[float, int]]) -> float:
    return sum(v * n for v, n in chunks) / max(1, sum(n for _, n in chunks))


def _z(own: list[tuple[float, int]], control: list[tuple[float, int]]) -> float | None:
    if len(own) < 2 or len(control) < 2:
        return None
    a, b = [v for v, _ in own], [v for v, _ in control]
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = _mean(own) - _mean(control)
    if se == 0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / se
