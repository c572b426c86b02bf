"""The exact all-reduce: three averagers on loopback end with byte-identical tensors equal to the
mean (up to the compression), and count the bytes they moved."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor

from cotrain.p2p.averager import ExactAllReduceRunner, ExactAverager
from cotrain.p2p.compression import INT4_BLOCK, make_compression, top_k_update
from cotrain.p2p.dht import start_dht, visible_maddrs


def step_together(averagers: list[ExactAverager], errors: list | None = None, *, bound: float = 45.0,
                  label: str = "the round") -> list:
    """One averaging round of every averager at once; what each gathered, or None where its round failed
    (its exception goes to `errors`). A round that has not ended on every peer within `bound` seconds
    fails the test at once, naming `label` and the stage each unfinished step is stuck in (`step`'s own
    timeout bounds only matchmaking: an all-reduce without next_chunk_timeout can wait forever)."""
    results: list = [None] * len(averagers)
    failures: list = errors if errors is not None else []
    controls = [averager.step(gather={"peer": i}, timeout=60, allow_retries=False, wait=False)
                for i, averager in enumerate(averagers)]
    deadline = time.monotonic() + bound
    for i, control in enumerate(controls):
        try:
            results[i] = control.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            stuck = {j: c.stage.name for j, c in enumerate(controls) if not c.done()}
            for j in stuck:
                with contextlib.suppress(Exception):
                    controls[j].cancel()
            pytest.fail(f"{label}: not finished within {bound} s; unfinished peers and their stages: {stuck}")
        except Exception as exc:
            failures.append(exc)
            if errors is None:
                raise
    return results


@pytest.mark.parametrize("compression, tolerance", [("none", 1e-6), ("fp16", 2e-3), ("int8", 0.6)])
def test_three_peers_get_identical_averages(compression: str, tolerance: float):
    first = start_dht()
    dhts = [first] + [start_dht(initial_peers=visible_maddrs(first)) for _ in range(2)]
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(50_000, generator=generator) for _ in range(3)]
    mean = sum(inputs) / 3
    averagers = [
        ExactAverager([x.clone()], dht, start=True, prefix="exact_test", target_group_size=None, min_group_size=3,
                      min_matchmaking_time=2.0, request_timeout=1.0, compression=make_compression(compression))
        for x, dht in zip(inputs, dhts)
    ]
    try:
        results = step_together(averagers)
        assert all(r is not None and sorted(v["peer"] for v in r.values()) == [0, 1, 2] for r in results)
        outputs = []
        for averager in averagers:
            with averager.get_tensors() as (tensor,):
                outputs.append(tensor.clone())
        assert all(torch.equal(outputs[0], out) for out in outputs[1:])
        assert (outputs[0] - mean).abs().max() < tolerance
        raw = inputs[0].numel() * 4
        sent = [averager.bytes_moved()[0] for averager in averagers]
        assert 0 < sum(sent) / 3 <= 2 * raw * (1 if compression == "none" else 0.6)
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()


@pytest.mark.parametrize("compression", ["int4", "topk"])
def test_cotrain_codecs_combine_every_peer_exactly_and_count_every_byte(compression: str):
    """int4 and sparse top-k through the real all-reduce: every peer ends with the same bytes, the codec's rounding
    of the mean of what the peers sent (for top-k: non-zero on the union of their entries, so sparse contributions
    combine as dense ones would), and the bytes counted are the parts' own, replies included."""
    first = start_dht()
    dhts = [first] + [start_dht(initial_peers=visible_maddrs(first)) for _ in range(2)]
    generator = torch.Generator().manual_seed(5)
    numel = 3 * 2**17  # parts of 2**17 (int4) or 2**16 (topk) values: each reducer has some
    inputs = [torch.randn(numel, generator=generator) for _ in range(3)]
    if compression == "topk":  # what a DiLoCo peer sends: its top-k entries per chunk, rounded as the codec sends
        inputs = [top_k_update(x, 0.02) for x in inputs]
    codec = make_compression(compression)
    sent_values = [deserialize_torch_tensor(codec.compress(x, CompressionInfo.from_tensor(x))) for x in inputs]
    if compression == "topk":
        assert all(torch.equal(sent, x) for sent, x in zip(sent_values, inputs))
    mean = sum(sent_values) / 3
    averagers = [
        ExactAverager([x.clone()], dht, start=True, prefix=f"codec_{compression}", target_group_size=None,
                      min_group_size=3, min_matchmaking_time=2.0, request_timeout=1.0, compression=codec)
        for x, dht in zip(inputs, dhts)
    ]
    try:
        step_together(averagers)
        outputs = []
        for averager in averagers:
            with averager.get_tensors() as (tensor,):
                outputs.append(tensor.clone())
        assert all(torch.equal(outputs[0], out) for out in outputs[1:])
        # each value is the mean of what the peers sent, rounded once more by the codec (within half a step of
        # its block), except that a reducer averages its own part as it is, not as rounded for sending
        own_part = 0 if compression == "topk" else max(float(x.abs().max()) for x in inputs) / 14 / 3
        assert (outputs[0] - mean).abs().max() <= (float(mean.abs().max()) / 14 + own_part) * 1.01
        if compression == "topk":
            union = set(torch.cat([x.nonzero().flatten() for x in inputs]).tolist())
            assert set(outputs[0].nonzero().flatten().tolist()) <= union
            assert len(outputs[0].nonzero()) > 0.9 * len(union) > 1.5 * len(inputs[0].nonzero())
        # every byte one peer counts as sent another counts as received: the counts are the messages' own
        sent, received = zip(*(averager.bytes_moved() for averager in averagers))
        assert sum(sent) == sum(received)
        moved = [a + b for a, b in zip(sent, received)]
        # `none` moves, per peer, the two thirds of the tensor the others reduce (sent, then received averaged)
        # and, as a reducer, its third from each of the two others (received, then sent back averaged)
        dense = 4 * (2 / 3 * numel) * 4
        if compression == "int4":  # three parts of 2**17 values; each peer sends and receives 4 messages
            message = 1 + 2 * (2**17 // INT4_BLOCK) + 2**17 // 2
            assert moved == [8 * message] * 3 and dense / moved[0] > 7.7
        else:  # independent random peers: the averages hold about three times each peer's entries
            assert all(dense / m > 40 for m in moved), (moved, dense)
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()


def test_group_size_changes_between_rounds_in_the_averager_process():
    """Built with min_group_size=1 (DiLoCo's default min_peers), resized to 3 before the round: the three
    averagers form one group of three (with min 1 each one's matchmaking could close a group of one)."""
    first = start_dht()
    dhts = [first] + [start_dht(initial_peers=visible_maddrs(first)) for _ in range(2)]
    averagers = [
        ExactAverager([torch.full((1000,), float(i))], dht, start=True, prefix="resize_test", target_group_size=None,
                      min_group_size=1, min_matchmaking_time=2.0, request_timeout=1.0)
        for i, dht in enumerate(dhts)
    ]
    try:
        assert averagers[0].group_size() == (1, None)
        with pytest.raises(ValueError):
            averagers[0].set_group_size(3, 2)
        for averager in averagers:
            averager.set_group_size(3, 3)
        assert [averager.group_size() for averager in averagers] == [(3, 3)] * 3
        results = step_together(averagers)
        assert all(r is not None and len(r) == 3 for r in results), results
        for averager in averagers:
            with averager.get_tensors() as (tensor,):
                assert torch.equal(tensor, torch.full((1000,), 1.0))
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()


class LateSenderRunner(ExactAllReduceRunner):
    """Starts sending its parts to the other peers long after their `sender_timeout` ran out (long
    enough that no skew between the peers' starts of the all-reduce can hide it)."""

    async def _communicate_with_peer(self, peer_id) -> None:
        if peer_id != self.peer_id:
            await asyncio.sleep(8 * self.sender_timeout)
        return await super()._communicate_with_peer(peer_id)


def test_a_dropped_sender_fails_the_round_for_the_whole_group():
    """Peer B starts sending after A's reducer gave up on it. hivemind's reducer would hand A the average
    of A's part without B (A applies a half-averaged round, B fails); here both refuse the round."""
    first = start_dht()
    second = start_dht(initial_peers=visible_maddrs(first))
    # large enough that both peers reduce a part (hivemind gives a tensor below one part's 512 KB
    # to a single reducer, and if that were B, B would never send to A at all)
    inputs = [torch.zeros(400_000), torch.ones(400_000)]
    settings = dict(start=True, prefix="late_test", target_group_size=None, min_group_size=2, min_matchmaking_time=2.0,
                    request_timeout=1.0, next_chunk_timeout=1.0)
    averagers = [ExactAverager([inputs[0].clone()], first, **settings),
                 ExactAverager([inputs[1].clone()], second, runner_type=LateSenderRunner, **settings)]
    try:
        errors: list = []
        results = step_together(averagers, errors)
        assert results == [None, None], (results, errors)
        # both took part in one group and failed in its all-reduce, not in matchmaking
        assert len(errors) == 2 and all("All-Reduce" in str(e) or "not averaged" in str(e) for e in errors), errors
    finally:
        for averager in averagers:
            averager.shutdown()
        first.shutdown()
        second.shutdown()


def test_many_back_to_back_rounds_all_succeed_on_both_peers():
    """The reducer keeps each sender's stream open until the sender has read every reply. When it
    closed right after writing, about 1 round in 500 lost the reply on its way through p2pd: one peer
    failed a round the other applied (2-3 failures per 1500 rounds here before the change, 0 since)."""
    first = start_dht()
    second = start_dht(initial_peers=visible_maddrs(first))
    averagers = [
        ExactAverager([torch.randn(164_672)], dht, start=True, prefix="many_test", target_group_size=2,
                      min_group_size=2, min_matchmaking_time=2.0, request_timeout=1.0)
        for dht in (first, second)
    ]
    try:
        started = time.monotonic()
        for round_ in range(400):
            errors: list = []
            results = step_together(averagers, errors, bound=20.0, label=f"round {round_}")
            assert not errors and all(results), f"round {round_}: {errors}"
        # each sender closes its streams at once: no reducer waits out its bound (10 s) in any round
        assert time.monotonic() - started < 120
        with averagers[0].get_tensors() as (a,), averagers[1].get_tensors() as (b,):
            assert torch.equal(a, b)
    finally:
        for averager in averagers:
            averager.shutdown()
        first.shutdown()
        second.shutdown()


class SlowAllReduceRunner(ExactAllReduceRunner):
    """An all-reduce that takes a few seconds (as over a volunteer's link), so a test can act while it runs."""

    async def _communicate_with_peer(self, peer_id) -> None:
        await asyncio.sleep(3.0)
        return await super()._communicate_with_peer(peer_id)


def test_a_peer_joining_while_the_others_average_stalls_nobody():
    """hivemind issue 445: a peer that joins while the others are in an all-reduce must not stall them or itself.
    It downloads their state during the all-reduce, the all-reduce ends for both of them, and the next round is
    one group of all three."""
    first = start_dht()
    second = start_dht(initial_peers=visible_maddrs(first))
    state = torch.arange(10_000, dtype=torch.float32)
    settings = dict(start=True, prefix="join_test", target_group_size=None, min_group_size=2, min_matchmaking_time=2.0,
                    request_timeout=1.0, runner_type=SlowAllReduceRunner, allow_state_sharing=True,
                    declare_state_period=1.0, state_provider=lambda: ({"outer_step": 7}, [state.clone()]))
    averagers = [ExactAverager([torch.full((10_000,), float(i))], dht, **settings)
                 for i, dht in enumerate((first, second))]
    third_dht = joiner = None
    try:
        controls = [averager.step(gather={"peer": i}, timeout=60, allow_retries=False, wait=False)
                    for i, averager in enumerate(averagers)]
        deadline = time.monotonic() + 30
        while controls[0].stage.name != "RUNNING_ALLREDUCE":
            assert time.monotonic() < deadline and not controls[0].done(), controls[0].stage
            time.sleep(0.05)
        third_dht = start_dht(initial_peers=visible_maddrs(first))
        joiner = ExactAverager([torch.zeros(10_000)], third_dht, **settings)
        began = time.monotonic()
        loaded = joiner.load_state_from_peers(timeout=20)
        assert loaded is not None and loaded[0]["outer_step"] == 7 and torch.equal(loaded[1][0], state)
        assert time.monotonic() - began < 15
        assert all(len(control.result(timeout=30)) == 2 for control in controls)  # the round the joiner landed in
        for averager in (*averagers, joiner):
            averager.set_group_size(3, 3)
        results = step_together([*averagers, joiner], bound=45, label="the first round with the joiner")
        assert all(r is not None and len(r) == 3 for r in results), results
    finally:
        for averager in (*averagers, *([joiner] if joiner else [])):
            averager.shutdown()
        for dht in (first, second, *([third_dht] if third_dht else [])):
            dht.shutdown()
