"""A hivemind `DecentralizedAverager` whose result is bit-identical on every peer of a group.

hivemind's all-reduce hands each peer `local + (average − local)`, rounded on every peer with
its own local values (and compressed per peer), so peers drift apart by a few ulps per round.
DiLoCo needs every peer to hold exactly the same global parameters. Here each reducer sends
back the average itself, compressed once; the reducer keeps the same compress → decompress
round trip of its own part. Every peer therefore ends with byte-for-byte the same tensors.

It also counts the bytes each peer sends and receives, and is strict where hivemind is lenient:
- a round in which a reducer failed (part of the result missing) is refused, instead of silently
  keeping local values for that part;
- a reducer that had to drop a sender (it left, or did not start sending within
  `sender_timeout`) answers with an error instead of the average of the remaining senders, so no
  peer applies a part that lacks a group member's pseudo-gradient, and the whole group refuses the
  round alike (hivemind would let the others apply a partial average while the dropped peer fails);
- the caller can resize matchmaking's groups between rounds (`set_group_size`);
- a reducer keeps each sender's stream open until the sender, having read every averaged part,
  closes it. hivemind's reducer closed the stream right after writing its last reply, and about
  one round in 500 on loopback the sender then saw the stream end before the reply arrived
  ("sent 0 parts"): it failed the round the others applied and had to download their state.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing as mp
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllreduceException, AllReduceRunner, BannedException
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import amap_in_executor, as_aiter, azip
from hivemind.utils.mpfuture import MPFuture

log = logging.getLogger(__name__)

SENDER_CLOSE_BOUND = 60.0  # seconds a reducer keeps a finished stream open for its sender to close


class ByteCounters:
    """Bytes sent / received by the averager process, and the seconds its all-reduces took (the
    rest of a `step` is matchmaking: waiting for the group), readable from the training process."""

    def __init__(self) -> None:
        self.sent = mp.Value(ctypes.c_int64, 0)
        self.received = mp.Value(ctypes.c_int64, 0)
        self.allreduce_seconds = mp.Value(ctypes.c_double, 0.0)

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self.sent.get_lock():
            self.sent.value += sent
        with self.received.get_lock():
            self.received.value += received


class _ClosesAfterParts:
    """A stub whose `rpc_aggregate_part` stream ends (and is closed by this sender) as soon as the
    expected number of averaged parts arrived, instead of waiting for the reducer to close it."""

    def __init__(self, stub: Any, parts: int):
        self.stub, self.parts = stub, parts

    async def rpc_aggregate_part(self, requests: AsyncIterator[averaging_pb2.AveragingData]):
        stream = await self.stub.rpc_aggregate_part(requests)
        return self._first_parts(stream)

    async def _first_parts(self, stream: AsyncGenerator[averaging_pb2.AveragingData, None]):
        received = 0
        try:
            async for message in stream:
                yield message
                received += 1
                if received == self.parts or message.code != averaging_pb2.AVERAGED_PART:
                    break
        finally:
            await stream.aclose()


class ExactAllReduceRunner(AllReduceRunner):
    """Yields the averaged tensors (not deltas), identical on every peer."""

    def __init__(self, *, counters: ByteCounters, compression_type: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.counters = counters
        self.compression_type = compression_type
        self.tensor_part_container.return_deltas = False

    def _averaged_over_whole_group(self, part_index: int) -> bool:
        """Whether every sender of the group contributed to this reducer's part `part_index`
        (a sender dropped after sending k parts still counts for parts 0..k-1)."""
        reducer = self.tensor_part_reducer
        return all(failed_after > part_index for failed_after in reducer.sender_failed_after)

    async def _communicate_with_peer(self, peer_id) -> None:
        if peer_id != self.peer_id:
            try:
                return await super()._communicate_with_peer(peer_id)  # registers what the reducer sent: the average
            except Exception as exc:  # hivemind logs why only at debug level
                log.warning("all-reduce part from %s failed: %r", peer_id, exc)
                raise
        peer_index = self.ordered_peer_ids.index(peer_id)
        sender_index = self.sender_peer_ids.index(peer_id)
        for part_index, part in enumerate(self.parts_for_local_averaging):
            averaged = await self.tensor_part_reducer.accumulate_part(
                sender_index, part_index, part, weight=self.weight
            )
            if not self._averaged_over_whole_group(part_index):
                self.tensor_part_container.register_failed_reducer(peer_index)
                return
            # the exact values the other peers decode from what this reducer sends them
            same_as_sent = deserialize_torch_tensor(serialize_torch_tensor(averaged, self.compression_type))
            self.tensor_part_container.register_processed_part(peer_index, part_index, same_as_sent)

    def _get_peer_stub(self, peer):
        parts = self.tensor_part_container.num_parts_by_peer[self.ordered_peer_ids.index(peer)]
        return _ClosesAfterParts(super()._get_peer_stub(peer), parts)

    async def rpc_aggregate_part(self, stream, context):
        async for message in super().rpc_aggregate_part(stream, context):
            yield message
        # the sender closes the stream once it holds every reply (which ends this handler at once);
        # the wait is only a bound for a sender that never does (reducer_timeout may be unset)
        await asyncio.sleep(self.reducer_timeout or SENDER_CLOSE_BOUND)

    async def _generate_input_for_peer(self, peer_index: int) -> AsyncIterator[averaging_pb2.AveragingData]:
        async for message in super()._generate_input_for_peer(peer_index):
            size = len(message.tensor_part.buffer)
            # the reducer answers with the average of this part, the same shape and compression
            self.counters.add(sent=size, received=size)
            yield message

    async def _accumulate_parts_streaming(self, stream, sender_index: int):
        part_index = 0
        try:
            async for tensor_part, weight, compression, size in amap_in_executor(
                lambda msg: (deserialize_torch_tensor(msg.tensor_part), msg.weight, msg.tensor_part.compression,
                             len(msg.tensor_part.buffer)),
                stream,
                max_prefetch=self.tensor_part_container.prefetch,
            ):
                try:
                    averaged = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, tensor_part, weight=weight
                    )
                    part_index += 1
                except BannedException:
                    break
                if not self._averaged_over_whole_group(part_index - 1):
                    yield averaging_pb2.AveragingData(code=averaging_pb2.INTERNAL_ERROR)
                    break
                reply = serialize_torch_tensor(averaged, compression)
                self.counters.add(sent=len(reply.buffer), received=size)
                yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=reply)
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])


class ExactAverager(DecentralizedAverager):
    """Averages `averaged_tensors` in place with the exact all-reduce above.

    Call `step(..., allow_retries=False)`: after a failed round the tensors may hold a partial
    result, so the caller must refill them before trying again.
    """

    def __init__(self, averaged_tensors: Sequence[torch.Tensor], dht, *, state_provider=None,
                 runner_type: type[ExactAllReduceRunner] = ExactAllReduceRunner, **kwargs: Any):
        # the peers' RPC names carry the averager's class name, so a different runner is passed in
        # rather than set on a subclass (a subclass would never meet plain averagers)
        self.runner_type = runner_type
        self.counters = ByteCounters()
        self.state_provider = state_provider
        compression = kwargs.get("compression")
        self._compression_type = compression.compression_type if compression is not None else 0
        super().__init__(averaged_tensors, dht, **kwargs)

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs) -> None:
        group_id = group_info.group_id if group_id is None else group_id
        runner = self.runner_type(
            p2p=self._p2p, servicer_type=type(self), prefix=self.prefix, tensors=tensors, group_id=group_id,
            ordered_peer_ids=group_info.peer_ids, counters=self.counters, compression_type=self._compression_type,
            **kwargs,
        )
        self._running_groups[group_id].set_result(runner)
        started = time.perf_counter()
        try:
            async for tensor, averaged in azip(as_aiter(*tensors), runner):
                tensor.copy_(averaged)
        finally:
            with self.counters.allreduce_seconds.get_lock():
                self.counters.allreduce_seconds.value += time.perf_counter() - started
        if runner.tensor_part_container.failed_size:
            raise AllreduceException(
                f"{runner.tensor_part_container.failed_size} values were not averaged (a peer left mid-round)"
            )

    def get_current_state(self):
        """What a joining peer downloads (runs in this process, on a peer's request)."""
        if self.state_provider is None:
            return super().get_current_state()
        metadata, tensors = self.state_provider()
        return metadata, tensors, None

    def set_group_size(self, min_size: int, target_size: int | None) -> None:
        """Groups of the next rounds: at least `min_size` members (a leader with fewer when its
        matchmaking time is up disbands and looks again), assembled at once when `target_size` join.

        hivemind takes both only in the constructor and keeps them in its `Matchmaking`, which lives
        in the averager's own process: the change travels through the command pipe, as hivemind's
        `set_group_bits` does. Call it between rounds, not during `step`.
        """
        if min_size < 1 or (target_size is not None and target_size < min_size):
            raise ValueError(f"group sizes must satisfy 1 <= min_size <= target_size, got {min_size}, {target_size}")
        future = MPFuture()
        self._outer_pipe.send(("_set_group_size", [], dict(min_size=min_size, target_size=target_size, future=future)))
        future.result()

    async def _set_group_size(self, min_size: int, target_size: int | None, future: MPFuture) -> None:
        try:
            self._matchmaking.min_group_size = min_size
            self._matchmaking.target_group_size = target_size
            future.set_result(None)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)

    def group_size(self) -> tuple[int, int | None]:
        """(min_size, target_size) that matchmaking uses now, read in the averager's process."""
        future = MPFuture()
        self._outer_pipe.send(("_get_group_size", [], dict(future=future)))
        return future.result()

    async def _get_group_size(self, future: MPFuture) -> None:
        future.set_result((self._matchmaking.min_group_size, self._matchmaking.target_group_size))

    def bytes_moved(self) -> tuple[int, int]:
        return int(self.counters.sent.value), int(self.counters.received.value)

    def allreduce_seconds(self) -> float:
        """Seconds spent in all-reduces so far (the part of the rounds that moved tensors)."""
        return float(self.counters.allreduce_seconds.value)
