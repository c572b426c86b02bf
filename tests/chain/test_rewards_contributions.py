"""Pro-rata splits and the plausibility checks on progress records."""

from __future__ import annotations

from cotrain.chain.contributions import Limits, tally, weights
from cotrain.chain.rewards import split_pool
from cotrain.p2p.progress import PeerProgress

A, B, C = ("0x" + c * 64 for c in "abc")


def test_split_sums_to_pool_and_is_pro_rata():
    shares = split_pool(1_000_000, {A: 500, B: 300, C: 200})
    assert shares == {A: 500_000, B: 300_000, C: 200_000}


def test_remainder_is_deterministic_and_exact():
    shares = split_pool(10, {C: 1, A: 1, B: 1})
    assert sum(shares.values()) == 10
    assert shares == {A: 4, B: 3, C: 3}  # the one left-over unit goes to the lowest address on a tie
    assert split_pool(10, {B: 1, C: 1, A: 1}) == shares  # input order does not matter
    uneven = split_pool(100, {A: 1, B: 2, C: 4})  # 14.28, 28.57, 57.14 → largest remainders first
    assert uneven == {A: 14, B: 29, C: 57} and sum(uneven.values()) == 100


def test_zero_weights_and_empty_pool():
    assert split_pool(100, {A: 0, B: 5}) == {B: 100}
    assert split_pool(0, {A: 1}) == {A: 0}
    assert split_pool(100, {}) == {}


def Rec(peer_id: str, tokens: int, samples: int, outer_step: int, tokens_per_second: float,
        wallet: str | None, device: str = "NVIDIA H100 80GB HBM3", updated: float = 0.0, session_id: str = "s1",
        step: int = 0) -> PeerProgress:
    return PeerProgress(peer_id=peer_id, session_id=session_id, step=step, outer_step=outer_step,
                        tokens_per_second=tokens_per_second, samples=samples, tokens=tokens, wallet=wallet,
                        device=device, updated=updated)


def test_honest_peers_are_verified_and_weighted_by_tokens():
    records = [Rec("p1", 1000, 10, r, 5000, A, updated=r) for r in range(3)] + \
              [Rec("p2", 3000, 30, r, 5000, B, updated=r) for r in range(3)]
    out = tally(records, Limits(tokens_per_outer_round=2048, seq_length=128))
    assert [c.status for c in out] == ["verified", "verified"]
    assert out[0].outer_rounds == 3 and out[0].compute_seconds == 0.2
    assert weights(out) == {A: 1000, B: 3000}


def test_implausible_peers_are_excluded_with_reasons():
    limits = Limits(tokens_per_outer_round=1000, seq_length=100)
    fast_cpu = [Rec("cpu", 100, 1, 0, 900_000, A, device="cpu")]
    too_many = [Rec("greedy", 50_000, 500, 0, 1000, B)]
    no_wallet = [Rec("anon", 100, 1, 0, 100, None)]
    backwards = [Rec("rb", 500, 5, 0, 100, C, updated=1), Rec("rb", 400, 4, 1, 100, C, updated=2)]
    out = {c.peer_id: c for c in tally(fast_cpu + too_many + no_wallet + backwards, limits)}
    assert all(not c.verified for c in out.values())
    assert "tokens/s" in out["cpu"].reason and "cpu" in out["cpu"].reason
    assert "outer round" in out["greedy"].reason
    assert "cotrain join --wallet" in out["anon"].reason
    assert "backwards" in out["rb"].reason
    assert weights(out.values()) == {}


def test_unproven_wallet_is_excluded():
    out = tally([Rec("p1", 100, 1, 0, 100, A)], bound_wallets={"p1": B})
    assert not out[0].verified and "not proven" in out[0].reason


def test_rounds_that_fell_between_two_snapshots_still_count():
    """Fast rounds: the monitor saw outer steps 0, 2 and 4 only; the peer was there for all five."""
    records = [Rec("p1", 1024 * (r + 1), 16 * (r + 1), r, 5000, A, updated=r) for r in (0, 2, 4)]
    out = tally(records, Limits(tokens_per_outer_round=1024, seq_length=64))
    assert out[0].status == "verified", out[0].reason
    assert out[0].outer_rounds == 5
    greedy = [Rec("p2", 1024 * 8, 16 * 8, r, 5000, B, updated=r) for r in (0, 2, 4)]  # 8 rounds' worth in 5
    assert tally(greedy, Limits(tokens_per_outer_round=1024, seq_length=64))[0].status == "excluded"
