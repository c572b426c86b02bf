"""The verification vocabulary reads only well-formed values from the network, and the update digest shows one ulp."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cotrain.p2p.digests import tensor_digest
from cotrain.p2p.progress import BadRecord
from cotrain.p2p.verification import REASON_SENTENCES, Commitment, Reason, Receipt, Verdict

PEER = "QmUQWXKeTU7aVJbzjVMqZrXt4QMBAGsFU2ZmjL2bWZShxB"
OTHER = "QmXbRvy1vGQ5hxmx4pS3vDPxjRu2wVVXkb8xVdR4sjwo4z"
H16, H64 = "0123456789abcdef", "ab" * 32


def _commitment(**changes) -> dict:
    good = Commitment(peer_id=PEER, session_id="s1", round=3, base_hash=H16, update_hash=H64,
                      shard_id="fedcba9876543210", inner_steps=20, param_hashes=(H16, "1" * 16),
                      committed_at=1.7e9).as_dict()
    return good | changes


def _receipt(**changes) -> dict:
    good = Receipt(peer_id=PEER, session_id="s1", round=3, members={PEER: H64, OTHER: "cd" * 32}, result_hash=H64,
                   signed_at=1.7e9).as_dict()
    return good | changes


def _verdict(**changes) -> dict:
    good = Verdict(session_id="s1", round=3, peer_id=PEER, reason=Reason.VERIFIED, detail="It trained on its shard.",
                   scores={"usefulness": 0.25, "control_drop": -0.01}, tokens=10240).as_dict()
    return good | changes


def test_good_values_read_back_equal():
    commitment = Commitment.parse(_commitment())
    assert commitment.param_hashes == (H16, "1" * 16) and commitment.round == 3 and commitment.committed_at == 1.7e9
    assert Commitment.parse(commitment.as_dict()) == commitment
    # msgpack may hand back a tuple, whole floats for ints, and fields a newer peer added
    assert Commitment.parse(_commitment(param_hashes=(H16,), round=3.0, extra="ignored")).round == 3
    assert Commitment.parse(_commitment(param_hashes=[])).param_hashes == ()
    receipt = Receipt.parse(_receipt())
    assert receipt.members == {PEER: H64, OTHER: "cd" * 32} and Receipt.parse(receipt.as_dict()) == receipt
    verdict = Verdict.parse(_verdict())
    assert verdict.reason is Reason.VERIFIED and verdict.scores["control_drop"] == -0.01  # a loss may rise
    as_json = json.loads(json.dumps(verdict.as_dict()))
    assert as_json["reason"] == "verified" and type(verdict.as_dict()["reason"]) is str
    assert Verdict.parse(as_json) == verdict


def test_a_commitment_names_the_first_step_of_its_round_and_older_ones_read_as_zero():
    commitment = Commitment.parse(_commitment(first_step=120))
    assert commitment.first_step == 120 and Commitment.parse(commitment.as_dict()) == commitment
    older = {k: v for k, v in _commitment().items() if k != "first_step"}
    assert Commitment.parse(older).first_step == 0
    for bad in (-1, 2**31, "12", 1.5):
        with pytest.raises(BadRecord, match="its first_step"):
            Commitment.parse(_commitment(first_step=bad))


COMMITMENT_FAULTS = {
    "not a mapping": (["round", 3], "not a mapping"),
    "no update hash": ({k: v for k, v in _commitment().items() if k != "update_hash"}, "no 'update_hash'"),
    "negative round": (_commitment(round=-1), "its round"),
    "round 2**31": (_commitment(round=2**31), "its round"),
    "round as text": (_commitment(round="3"), "its round"),
    "round as bool": (_commitment(round=True), "its round"),
    "fractional round": (_commitment(round=2.5), "its round"),
    "no inner steps": (_commitment(inner_steps=0), "its inner_steps"),
    "too many inner steps": (_commitment(inner_steps=10**6 + 1), "its inner_steps"),
    "NaN time": (_commitment(committed_at=math.nan), "its committed_at"),
    "infinite time": (_commitment(committed_at=math.inf), "its committed_at"),
    "too many param hashes": (_commitment(param_hashes=[H16] * 1025), "its param_hashes: 1025 entries"),
    "param hashes as text": (_commitment(param_hashes=H16), "its param_hashes: not a list"),
    "a param hash not hex": (_commitment(param_hashes=[H16, "xyz0123456789abc"]), "its param_hashes"),
    "upper-case hash": (_commitment(update_hash=H64.upper()), "its update_hash"),
    "overlong hash": (_commitment(update_hash="a" * 129), "its update_hash"),
    "short hash": (_commitment(base_hash="abc"), "its base_hash"),
    "hash as number": (_commitment(shard_id=12345678), "its shard_id"),
    "overlong peer id": (_commitment(peer_id="Q" * 201), "its peer_id"),
    "peer id as number": (_commitment(peer_id=7), "its peer_id"),
    "session as list": (_commitment(session_id=["s1"]), "its session_id"),
}


@pytest.mark.parametrize("what", COMMITMENT_FAULTS)
def test_a_malformed_commitment_says_which_field(what):
    value, says = COMMITMENT_FAULTS[what]
    with pytest.raises(BadRecord, match=says.replace("*", r"\*")):
        Commitment.parse(value)


RECEIPT_FAULTS = {
    "no members": (_receipt(members={}), "its members: 0 entries"),
    "257 members": (_receipt(members={f"peer{i}": H64 for i in range(257)}), "its members: 257 entries"),
    "members as list": (_receipt(members=[PEER, H64]), "its members: not a mapping"),
    "member digest not hex": (_receipt(members={PEER: "not a digest!"}), "its members"),
    "overlong member id": (_receipt(members={"Q" * 201: H64}), "its members"),
    "member id as number": (_receipt(members={5: H64}), "its members"),
    "result hash missing": ({k: v for k, v in _receipt().items() if k != "result_hash"}, "no 'result_hash'"),
    "negative time": (_receipt(signed_at=-1.0), "its signed_at"),
    "negative round": (_receipt(round=-3), "its round"),
}


@pytest.mark.parametrize("what", RECEIPT_FAULTS)
def test_a_malformed_receipt_says_which_field(what):
    value, says = RECEIPT_FAULTS[what]
    with pytest.raises(BadRecord, match=says):
        Receipt.parse(value)


VERDICT_FAULTS = {
    "unknown reason": (_verdict(reason="great"), "its reason: 'great' is not one of verified, no_commit"),
    "reason as number": (_verdict(reason=1), "its reason"),
    "NaN score": (_verdict(scores={"usefulness": math.nan}), "its scores"),
    "infinite score": (_verdict(scores={"norm": -math.inf}), "its scores"),
    "score as bool": (_verdict(scores={"norm": True}), "its scores"),
    "too many scores": (_verdict(scores={f"s{i}": 0.0 for i in range(33)}), "its scores: 33 entries"),
    "overlong score name": (_verdict(scores={"n" * 65: 0.0}), "its scores"),
    "overlong detail": (_verdict(detail="x" * 1001), "its detail"),
    "negative tokens": (_verdict(tokens=-1), "its tokens"),
    "fractional tokens": (_verdict(tokens=1.5), "its tokens"),
    "negative round": (_verdict(round=-1), "its round"),
}


@pytest.mark.parametrize("what", VERDICT_FAULTS)
def test_a_malformed_verdict_says_which_field(what):
    value, says = VERDICT_FAULTS[what]
    with pytest.raises(BadRecord, match=says):
        Verdict.parse(value)


def test_every_reason_has_one_plain_sentence():
    assert set(REASON_SENTENCES) == set(Reason)
    for reason, sentence in REASON_SENTENCES.items():
        assert sentence.endswith(".") and sentence.count(". ") == 0 and "_" not in sentence, reason


def test_tensor_digest_is_equal_for_equal_tensors_and_shows_one_ulp():
    torch.manual_seed(0)
    flat = torch.randn(1000)
    digest = tensor_digest(flat)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert tensor_digest(flat.clone()) == digest
    assert tensor_digest([flat[:300].reshape(10, 30), flat[300:]]) == digest  # the parts, in order, are the flat
    assert tensor_digest(flat.reshape(20, 50).t().contiguous().t()) == tensor_digest(flat.reshape(20, 50))
    nudged = flat.clone()
    nudged[617] = torch.nextafter(nudged[617], torch.tensor(math.inf))
    assert nudged[617] != flat[617] and torch.allclose(nudged, flat, rtol=0, atol=1e-6)
    assert tensor_digest(nudged) != digest
    assert tensor_digest([flat[300:], flat[:300]]) != digest  # order counts
    with pytest.raises(TypeError, match="fp32"):
        tensor_digest(flat.double())


def test_a_round_is_worth_the_batch_its_peer_trained_never_more_than_the_sessions():
    """A volunteer may train with a smaller batch than the session's (its machine is smaller): its verified round
    is worth that much less; claiming a larger one earns nothing more. Older commitments read as the session's."""
    from cotrain.p2p.verification import round_tokens

    half = Commitment.parse(_commitment(batch_size=4, shard_samples=0))
    assert (half.batch_size, half.samples_per_step(8), half.shard_size(80, 8)) == (4, 4, 40)
    assert round_tokens(half, session_batch=8, seq_length=64) == half.inner_steps * 4 * 64
    greedy = Commitment.parse(_commitment(batch_size=512, shard_samples=32))
    assert round_tokens(greedy, session_batch=8, seq_length=64) == greedy.inner_steps * 8 * 64
    assert greedy.shard_size(80, 8) == 32
    old = Commitment.parse({k: v for k, v in _commitment().items() if k not in ("batch_size", "shard_samples")})
    assert round_tokens(old, session_batch=8, seq_length=64) == old.inner_steps * 8 * 64
    for bad in (-1, 10**7, 2.5, "8"):
        with pytest.raises(BadRecord, match="batch_size"):
            Commitment.parse(_commitment(batch_size=bad))
