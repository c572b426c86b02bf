"""The round judge (core/validation.py) on one honestly simulated DiLoCo round of a real tiny Llama:
honest peers train on their own shards and are verified; every kind of cheat gets its reason code."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

from cotrain.config import ModelConfig
from cotrain.core.llm import build_model
from cotrain.core.shards import shard_batch, shard_id, shard_indices, shard_seed
from cotrain.core.strategies.diloco import params_hash
from cotrain.core.train import token_cross_entropy
from cotrain.core.validation import RoundEvidence, RoundJudge
from cotrain.p2p.digests import tensor_digest
from cotrain.p2p.verification import Commitment, Reason, Receipt, Verdict

VOCAB, SEQ = 256, 32
NUM_SAMPLES = 512
BATCH = 8
INNER_STEPS = 8
SHARD = 32  # each shard sample is seen INNER_STEPS * BATCH / SHARD = 2 times in a round
SESSION = "s-validation"
ROUND = 3
DEADLINE = 1000.0


def corpus(seed: int) -> torch.Tensor:
    """Samples of SEQ + 1 tokens from one sparse Markov chain (each token has 4 possible successors):
    the chain is learnable from any shard, the choices of a sample only from that sample."""
    gen = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, VOCAB, (VOCAB, 4), generator=gen)
    tokens = torch.empty(NUM_SAMPLES + 64, SEQ + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, VOCAB, (len(tokens),), generator=gen)
    choices = torch.randint(0, 4, tokens.shape, generator=gen)
    for t in range(1, SEQ + 1):
        tokens[:, t] = successors[tokens[:, t - 1], choices[:, t]]
    return tokens


def loss_of(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
    return token_cross_entropy(logits, tokens[:, 1:]).item()


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().to(torch.float32).reshape(-1) for t in tensors])


@dataclass
class Round:
    """One round's base model, data and the honest update of each peer (pseudo-gradient, flat fp32)."""

    model: torch.nn.Module
    base: list[torch.Tensor]
    base_hash: str
    data: torch.Tensor  # NUM_SAMPLES training samples, then 64 held-out ones
    updates: dict[str, torch.Tensor] = field(default_factory=dict)

    def samples(self, indices: torch.Tensor) -> torch.Tensor:
        return self.data[indices]

    @property
    def heldout(self) -> torch.Tensor:
        return self.data[NUM_SAMPLES:NUM_SAMPLES + 32]

    def train(self, peer: str, shard_of: str | None = None, lr: float = 3e-3) -> torch.Tensor:
        """H AdamW steps from the base on the round shard of `shard_of` (default: the peer's own)."""
        model = copy.deepcopy(self.model).train()
        optimizer = torch.optim.AdamW(trainable(model), lr=lr, weight_decay=0.0)
        shard = shard_indices(NUM_SAMPLES, SHARD, shard_seed(SESSION, ROUND, self.base_hash, shard_of or peer))
        for step in range(INNER_STEPS):
            tokens = self.samples(shard_batch(shard, step, BATCH))
            logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
            token_cross_entropy(logits, tokens[:, 1:]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        update = flat_of(self.base) - flat_of(trainable(model))
        self.updates[peer] = update
        return update

    def judge(self, **options) -> RoundJudge:
        return RoundJudge(
            self.model, self.base, loss_of, self.samples, NUM_SAMPLES, SHARD, BATCH, SESSION, 1, 0.0, 100.0,
            seq_length=SEQ, heldout=self.heldout, eval_seed=7, **options,
        )


def new_round(seed: int, warmup_steps: int = 30) -> Round:
    """A debug Llama trained `warmup_steps` on the whole corpus (the state of a session a few rounds in)."""
    data = corpus(seed)
    model = build_model(ModelConfig(type="llama2", size="debug"), vocab_size=VOCAB, seq_length=SEQ, special={},
                        seed=seed)
    optimizer = torch.optim.AdamW(trainable(model), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(warmup_steps):
        tokens = data[torch.randint(0, NUM_SAMPLES, (BATCH,), generator=gen)]
        token_cross_entropy(model(input_ids=tokens[:, :-1], use_cache=False).logits, tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    base = [p.detach().clone() for p in trainable(model)]
    return Round(model, base, params_hash(base), data)


def commitment(rnd: Round, peer: str, update: torch.Tensor, committed_at: float = DEADLINE - 5) -> Commitment:
    return Commitment(
        peer_id=peer, session_id=SESSION, round=ROUND, base_hash=rnd.base_hash, update_hash=tensor_digest(update),
        shard_id=shard_id(SESSION, ROUND, rnd.base_hash, peer), inner_steps=INNER_STEPS,
        param_hashes=("0" * 16,), committed_at=committed_at,
    )


def receipts_for(members: dict[str, str], signers: list[str]) -> dict[str, Receipt]:
    return {
        signer: Receipt(peer_id=signer, session_id=SESSION, round=ROUND, members=dict(members), result_hash="ab" * 32,
                        signed_at=DEADLINE + 1)
        for signer in signers
    }


def evidence_of(rnd: Round, updates: dict[str, torch.Tensor | None], **kwargs) -> RoundEvidence:
    """Evidence of a round in which every peer of `updates` committed its update in time and the
    whole group signed receipts naming everybody's committed hash."""
    commitments = {p: commitment(rnd, p, u) for p, u in updates.items() if u is not None}
    hashes = {p: c.update_hash for p, c in commitments.items()}
    return RoundEvidence(
        round=ROUND, base_hash=rnd.base_hash, receipts=receipts_for(hashes, sorted(hashes)), commitments=commitments,
        updates=dict(updates), deadline=DEADLINE, members=set(updates), **kwargs,
    )


def by_peer(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {v.peer_id: v for v in verdicts}


def noise_like(update: torch.Tensor, seed: int) -> torch.Tensor:
    noise = torch.randn(update.shape, generator=torch.Generator().manual_seed(seed))
    return noise * (update.norm() / noise.norm())


@pytest.fixture(scope="module")
def simulated() -> Iterator[Round]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the debug model is too small for threads to help
    try:
        rnd = new_round(seed=0)
        for peer in ("honest-a", "honest-b", "honest-c"):
            rnd.train(peer)
        rnd.train("wrong-shard", shard_of="somebody-else")
        yield rnd
    finally:
        torch.set_num_threads(threads)


def test_honest_peers_are_verified_and_cheats_fail_their_own_data(simulated: Round):
    rnd = simulated
    updates = dict(rnd.updates)
    updates["noise"] = noise_like(updates["honest-a"], seed=1)
    updates["copier"] = updates["honest-a"].clone()  # committed honest-a's digest, its own shard unused
    updates["scaled-copy"] = updates["honest-b"] * 1.001  # another digest, the same direction
    judge = rnd.judge()
    before = [p.detach().clone() for p in trainable(rnd.model)]
    rnd.model.train()
    start = time.process_time()
    verdicts = by_peer(judge.judge(evidence_of(rnd, updates)))
    seconds = time.process_time() - start
    print(f"\nCPU seconds per judged peer: {seconds / len(updates):.3f}")
    for v in verdicts.values():
        print(f"{v.peer_id:12} {v.reason:17} {v.detail}")
    assert {p: v.reason for p, v in verdicts.items()} == {
        "honest-a": Reason.VERIFIED, "honest-b": Reason.VERIFIED, "honest-c": Reason.VERIFIED,
        "wrong-shard": Reason.OWN_DATA_FAIL, "noise": Reason.OWN_DATA_FAIL, "copier": Reason.DUPLICATE_UPDATE,
        "scaled-copy": Reason.DUPLICATE_UPDATE,
    }
    honest = verdicts["honest-a"]
    assert honest.tokens == INNER_STEPS * BATCH * SEQ
    assert set(honest.scores) >= {"usefulness", "own_drop", "control_drop", "own_data", "norm"}
    assert honest.scores["own_data"] == pytest.approx(honest.scores["own_drop"] - honest.scores["control_drop"])
    assert honest.scores["usefulness"] > 0  # the chain it learned holds on held-out samples too
    assert honest.scores["norm"] == pytest.approx(float(updates["honest-a"].norm()), rel=1e-5)
    assert all(v.tokens == 0 for p, v in verdicts.items() if v.reason != Reason.VERIFIED)
    assert "honest-a" in verdicts["copier"].detail and "honest-b" in verdicts["scaled-copy"].detail
    assert all(v.detail.endswith(".") and v.detail.count(". ") == 0 for v in verdicts.values())
    assert all(Verdict.parse(v.as_dict()) == v for v in verdicts.values())  # every score finite and in range
    # the model is back as it was: its params, and train mode
    assert all(torch.equal(a, b) for a, b in zip(before, trainable(rnd.model)))


def test_of_twin_updates_the_later_commitment_is_the_copy(simulated: Round):
    """A copycat must first see the update it copies, so it commits after the original: it is the duplicate even
    when the original itself fails (here a wrong-shard peer's update, copied), and the original keeps its own
    reason."""
    rnd = simulated
    updates = {"honest-a": rnd.updates["honest-a"], "wrong-shard": rnd.updates["wrong-shard"],
               "copier": rnd.updates["wrong-shard"].clone(), "copier-of-honest": rnd.updates["honest-a"].clone()}
    evidence = evidence_of(rnd, updates)
    for peer in ("copier", "copier-of-honest"):
        evidence.commitments[peer] = commitment(rnd, peer, updates[peer], committed_at=DEADLINE - 1)
    verdicts = by_peer(rnd.judge().judge(evidence))
    assert {p: v.reason for p, v in verdicts.items()} == {
        "honest-a": Reason.VERIFIED, "wrong-shard": Reason.OWN_DATA_FAIL, "copier": Reason.DUPLICATE_UPDATE,
        "copier-of-honest": Reason.DUPLICATE_UPDATE,
    }
    assert "wrong-shard" in verdicts["copier"].detail and "committed it first" in verdicts["copier"].detail
    assert rnd.model.training


def test_reasons_before_any_loss_is_computed(simulated: Round):
    """No commitment, late, no receipts, a download unlike the commitment, NaN: each named, in order."""
    rnd = simulated
    good = rnd.updates["honest-b"]
    nan = good.clone()
    nan[3] = math.nan
    huge = good * 1e4
    served = {"honest-b": good, "no-commit": good, "late": good + 1e-3, "loner": good + 2e-3,
              "tampered": good + 3e-3, "gone": good + 4e-3, "nan": nan, "huge": huge}
    evidence = evidence_of(rnd, served)
    del evidence.commitments["no-commit"]
    evidence.commitments["late"] = commitment(rnd, "late", served["late"], committed_at=DEADLINE + 0.5)
    for receipt in evidence.receipts.values():  # nobody else vouches for the loner
        receipt.members.pop("loner", None)
    del evidence.receipts["loner"]
    evidence.updates["tampered"] = good + 5e-3  # serves another tensor than it committed
    evidence.updates["gone"] = None  # could not be downloaded
    verdicts = by_peer(rnd.judge().judge(evidence))
    for v in verdicts.values():
        print(f"{v.peer_id:12} {v.reason:17} {v.detail}")
    assert {p: v.reason for p, v in verdicts.items()} == {
        "honest-b": Reason.VERIFIED, "no-commit": Reason.NO_COMMIT, "late": Reason.LATE,
        "loner": Reason.NOT_IN_GROUP, "tampered": Reason.SPOT_CHECK_FAIL, "gone": Reason.LATE,
        "nan": Reason.NON_FINITE, "huge": Reason.NON_FINITE,
    }
    assert "0 of the 1 receipts" in verdicts["loner"].detail
    assert "1 NaN" in verdicts["nan"].detail
    assert verdicts["huge"].scores == {"norm": pytest.approx(float(huge.norm()), rel=1e-5)}
    assert all(v.tokens == 0 and Verdict.parse(v.as_dict()) == v for p, v in verdicts.items() if p != "honest-b")


def test_a_receipt_counts_only_from_another_member_with_the_committed_hash(simulated: Round):
    rnd = simulated
    updates = {"honest-a": rnd.updates["honest-a"], "honest-b": rnd.updates["honest-b"]}
    evidence = evidence_of(rnd, updates)
    hashes = {p: c.update_hash for p, c in evidence.commitments.items()}
    # honest-a's only receipt is its own; honest-b's names another hash for honest-a; an outsider vouches
    evidence.receipts = receipts_for(hashes | {"honest-a": "cd" * 32}, ["honest-a", "honest-b"])
    evidence.receipts.update(receipts_for(hashes, ["outsider"]))
    judge = rnd.judge(own_data_z=0.0)
    assert {v.peer_id: v.reason for v in judge.judge(evidence)} == {
        "honest-a": Reason.NOT_IN_GROUP, "honest-b": Reason.VERIFIED,
    }
    # a quorum of 2 needs two other members
    strict = RoundJudge(rnd.model, rnd.base, loss_of, rnd.samples, NUM_SAMPLES, SHARD, BATCH, SESSION, 2,
                        seq_length=SEQ)
    assert all(v.reason == Reason.NOT_IN_GROUP for v in strict.judge(evidence_of(rnd, updates)))


def test_a_commitment_for_other_params_or_another_round_is_no_commitment(simulated: Round):
    rnd = simulated
    update = rnd.updates["honest-c"]
    evidence = evidence_of(rnd, {"honest-c": update, "behind": update + 1e-3})
    stale = evidence.commitments["behind"]
    evidence.commitments["behind"] = Commitment(**{**stale.as_dict(), "base_hash": "0123456789abcdef",
                                                   "param_hashes": stale.param_hashes})
    verdicts = by_peer(rnd.judge().judge(evidence))
    assert verdicts["behind"].reason == Reason.NO_COMMIT and "0123456789abcdef" in verdicts["behind"].detail
    with pytest.raises(ValueError, match="base params"):
        rnd.judge().judge(RoundEvidence(ROUND, "f" * 16, {}, {}, {}, DEADLINE, set()))


def test_the_model_is_restored_when_the_loss_fails(simulated: Round):
    """The loss raises while the model holds base − update: the model gets back its own params
    (not the base) and its train mode."""
    rnd = simulated
    params = trainable(rnd.model)
    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    before = [p.detach().clone() for p in params]

    def failing(model, tokens):
        if not torch.equal(params[0], rnd.base[0]):
            raise RuntimeError("out of memory")
        return loss_of(model, tokens)

    judge = RoundJudge(rnd.model, rnd.base, failing, rnd.samples, NUM_SAMPLES, SHARD, BATCH, SESSION, seq_length=SEQ)
    rnd.model.train()
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            judge.judge(evidence_of(rnd, {p: rnd.updates[p] for p in ("honest-a", "honest-b")}))
        assert all(torch.equal(a, b) for a, b in zip(before, params))
        assert rnd.model.training
    finally:
        with torch.no_grad():
            for p, b in zip(params, rnd.base):
                p.copy_(b)


def test_the_margin_and_the_significance_are_both_required(simulated: Round):
    rnd = simulated
    updates = {p: rnd.updates[p] for p in ("honest-a", "honest-b")}
    verdicts = rnd.judge().judge(evidence_of(rnd, updates))
    assert all(v.reason == Reason.VERIFIED for v in verdicts)
    margin = min(v.scores["own_data"] for v in verdicts) + 0.01
    z = min(v.scores["own_data_z"] for v in verdicts) + 0.01
    for judge in (
        RoundJudge(rnd.model, rnd.base, loss_of, rnd.samples, NUM_SAMPLES, SHARD, BATCH, SESSION, 1, margin,
                   seq_length=SEQ),
        rnd.judge(own_data_z=z),
    ):
        reasons = [v.reason for v in judge.judge(evidence_of(rnd, updates))]
        assert Reason.OWN_DATA_FAIL in reasons


def test_a_peer_not_drawn_for_the_audit_is_verified_on_its_commitment_and_receipts(simulated: Round):
    """Downloading every update every round would cost as many bytes as averaging: the validator audits a sample.
    A member left out of the sample is verified on what needs no download (commitment in time, receipts); an
    exact copy of an earlier commitment is caught from the digests alone, audited or not."""
    rnd = simulated
    updates: dict[str, torch.Tensor | None] = {"honest-a": rnd.updates["honest-a"], "honest-b": rnd.updates["honest-b"],
                                               "copier": rnd.updates["honest-a"].clone()}
    evidence = evidence_of(rnd, updates)
    evidence.commitments["copier"] = commitment(rnd, "copier", rnd.updates["honest-a"], committed_at=DEADLINE - 1)
    del evidence.updates["honest-b"], evidence.updates["copier"]  # not drawn for this round's audit
    verdicts = by_peer(rnd.judge().judge(evidence))
    assert {p: v.reason for p, v in verdicts.items()} == {
        "honest-a": Reason.VERIFIED, "honest-b": Reason.VERIFIED, "copier": Reason.DUPLICATE_UPDATE}
    assert verdicts["honest-b"].detail.startswith("not audited") and verdicts["honest-b"].tokens > 0
    assert "usefulness" in verdicts["honest-a"].scores and not verdicts["honest-b"].scores
    assert "honest-a" in verdicts["copier"].detail


def test_a_failing_update_is_measured_again_on_more_of_its_shard_before_it_fails(simulated: Round):
    """On four samples of its shard an honest update's advantage can be lost in the noise; before failing it, the
    judge measures again on the whole shard, which shows it, while the cheats still fail. Which honest update four
    samples fail depends on the machine's float arithmetic (honest-b on one, honest-c on another), so the z threshold
    is put between the weakest honest update's z on four samples and every honest update's z on the whole shard."""
    rnd = simulated
    honest = ("honest-a", "honest-b", "honest-c")
    updates = {peer: rnd.updates[peer] for peer in (*honest, "wrong-shard")} | {
        "noise": noise_like(rnd.updates["honest-a"], seed=2)}

    def z_on(samples: int) -> dict[str, float]:
        judge = rnd.judge(max_eval_samples=samples, confirm_samples=samples)
        verdicts = by_peer(judge.judge(evidence_of(rnd, updates)))
        return {peer: verdicts[peer].scores["own_data_z"] for peer in honest}

    few, whole = z_on(4), z_on(SHARD)
    weakest = min(few, key=few.__getitem__)
    assert few[weakest] < min(whole.values()), (few, whole)  # the advantage grows with the samples
    threshold = (few[weakest] + min(whole.values())) / 2
    blind = by_peer(rnd.judge(max_eval_samples=4, confirm_samples=4, own_data_z=threshold)
                    .judge(evidence_of(rnd, updates)))
    assert blind[weakest].reason == Reason.OWN_DATA_FAIL  # the first measurement alone
    confirmed = by_peer(rnd.judge(max_eval_samples=4, confirm_samples=SHARD, own_data_z=threshold)
                        .judge(evidence_of(rnd, updates)))
    assert {p: v.reason for p, v in confirmed.items()} == {
        **dict.fromkeys(honest, Reason.VERIFIED), "wrong-shard": Reason.OWN_DATA_FAIL, "noise": Reason.OWN_DATA_FAIL}
