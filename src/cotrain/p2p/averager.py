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
  ("sent 0 parts"): it failed the round the others applied and had to download their state;
- for the same reason a matchmaking leader keeps a follower's join stream open after sending it
  BEGIN_ALLREDUCE until the follower closes it (a lost BEGIN_ALLREDUCE left the leader in an
  all-reduce with a follower still looking for a group).

Each peer also keeps its last round's pseudo-gradient (`keep_update`) for others to download exactly, as
fp32 bytes (`download_update`): a validator checks the download against the digest the peer committed to.
These bytes are counted apart from the averaging's (`verification_bytes`).

With `round_states` set, it also serves the files a peer keeps there of its training state at each commit point of
its last rounds (`<round>/<index>.pt`, written by the training process) to a validator's spot check
(`download_round_state`), as raw bytes of at most `max_round_state_bytes`; counted with the verification bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import time
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllreduceException, AllReduceRunner, BannedException
from hivemind.compression import (
    CompressionBase,
    CompressionInfo,
    NoCompression,
    deserialize_torch_tensor,
    serialize_torch_tensor,
)
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils.asyncio import amap_in_executor, as_aiter, azip
from hivemind.utils.mpfuture import MPFuture
from hivemind.utils.serializer import MSGPackSerializer

log = logging.getLogger(__name__)

SENDER_CLOSE_BOUND = 60.0  # seconds a reducer keeps a finished stream open for its sender to close
PART_VALUES = 2**18  # fp32 values per message of a served update: 1 MiB, like hivemind's state download parts
WRITE_WAIT = 5.0  # seconds the server waits for a `keep_update` under way to finish before it answers "nothing"
PIPE_GRACE = 5.0  # seconds the training process waits past a download's timeout for the averager's answer
STATE_PART_BYTES = 2**20  # bytes per message of a served round state
MAX_ROUND_STATE_BYTES = 2**30  # default cap of a served / downloaded round state
MAX_STATE_INDEX = 10**6  # commit points of a round (inner_steps <= 10**6)


class ByteCounters:
    """Bytes sent / received by the averager process, and the seconds its all-reduces took (the
    rest of a `step` is matchmaking: waiting for the group), readable from the training process."""

    def __init__(self) -> None:
        self.sent = mp.Value(ctypes.c_int64, 0)
        self.received = mp.Value(ctypes.c_int64, 0)
        self.allreduce_seconds = mp.Value(ctypes.c_double, 0.0)
        self.verification_sent = mp.Value(ctypes.c_int64, 0)
        self.verification_received = mp.Value(ctypes.c_int64, 0)

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self.sent.get_lock():
            self.sent.value += sent
        with self.received.get_lock():
            self.received.value += received

    def add_verification(self, sent: int = 0, received: int = 0) -> None:
        """Bytes of kept updates served to / downloaded from other peers (not averaging traffic)."""
        with self.verification_sent.get_lock():
            self.verification_sent.value += sent
        with self.verification_received.get_lock():
            self.verification_received.value += received


class KeptUpdate:
    """A peer's last pseudo-gradient in shared memory: written by the training process (`keep`), served by
    the averager process. The server streams straight from the buffer without a lock across its awaits; a
    version counter, odd while a write is under way, tells it whether a write overlapped what it read."""

    def __init__(self, numel: int) -> None:
        self.flat = torch.zeros(numel, dtype=torch.float32).share_memory_()
        self.round = mp.RawValue(ctypes.c_int64, -1)
        self.version = mp.RawValue(ctypes.c_int64, 0)
        self.write_lock = mp.Lock()

    def keep(self, round_: int, flat: torch.Tensor) -> None:
        if not 0 <= round_ < 2**31:
            raise ValueError(f"round must be in [0, 2**31), got {round_}")
        if flat.dtype != torch.float32 or flat.numel() != self.flat.numel():
            raise ValueError(
                f"a kept update is {self.flat.numel()} float32 values, got {flat.numel()} {flat.dtype} values"
            )
        with self.write_lock:
            self.version.value += 1  # odd: readers started now will not trust what they read
            try:
                self.round.value = -1
                self.flat.copy_(flat.detach().reshape(-1))
                self.round.value = round_
            finally:
                self.version.value += 1

    async def stable(self) -> tuple[int, int] | None:
        """(version, round) when no write is under way (waiting up to WRITE_WAIT for one to end)."""
        deadline = time.monotonic() + WRITE_WAIT
        while True:
            version = self.version.value
            round_ = self.round.value
            if version % 2 == 0 and self.version.value == version:
                return version, round_
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)

    def unchanged_since(self, version: int) -> bool:
        return self.version.value == version


class _Excluding:
    """Excluded peers on one hivemind `Matchmaking` (which has no such notion): its two entry points are wrapped
    once, in the averager's process, so a join request from an excluded peer is refused and an excluded peer is
    never asked to lead."""

    def __init__(self, matchmaking: Any) -> None:
        self.peers: set[PeerID] = set()
        check, request = matchmaking._check_reasons_to_reject, matchmaking._request_join_group

        def check_reasons_to_reject(join_request, context):
            if context.remote_id in self.peers:
                return averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return check(join_request, context)

        async def request_join_group(leader):
            return None if leader in self.peers else await request(leader)

        matchmaking._check_reasons_to_reject = check_reasons_to_reject
        matchmaking._request_join_group = request_join_group

    @classmethod
    def of(cls, matchmaking: Any) -> _Excluding:
        excluding = getattr(matchmaking, "_cotrain_excluding", None)
        if excluding is None:
            excluding = matchmaking._cotrain_excluding = cls(matchmaking)
        return excluding


class BadUpdate(Exception):
    """What a peer sent as its kept update is not one (the message says why)."""


class _ClosesAfterParts:
    """A stub whose `rpc_aggregate_part` stream ends (and is closed by this sender) as soon as the
    expected number of averaged parts arrived, instead of waiting for the reducer to close it. Counts the bytes
    of the averaged parts received (a sparse codec's average is larger than any one sender's part)."""

    def __init__(self, stub: Any, parts: int, counters: ByteCounters):
        self.stub, self.parts, self.counters = stub, parts, counters

    async def rpc_aggregate_part(self, requests: AsyncIterator[averaging_pb2.AveragingData]):
        stream = await self.stub.rpc_aggregate_part(requests)
        return self._first_parts(stream)

    async def _first_parts(self, stream: AsyncGenerator[averaging_pb2.AveragingData, None]):
        received = 0
        try:
            async for message in stream:
                self.counters.add(received=len(message.tensor_part.buffer))
                yield message
                received += 1
                if received == self.parts or message.code != averaging_pb2.AVERAGED_PART:
                    break
        finally:
            await stream.aclose()


class ExactAllReduceRunner(AllReduceRunner):
    """Yields the averaged tensors (not deltas), identical on every peer."""

    def __init__(self, *, counters: ByteCounters, codec: CompressionBase, **kwargs: Any):
        super().__init__(**kwargs)
        self.counters = counters
        self.codec = codec
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
            same_as_sent = deserialize_torch_tensor(self._encode(averaged))
            self.tensor_part_container.register_processed_part(peer_index, part_index, same_as_sent)

    def _encode(self, averaged: torch.Tensor) -> runtime_pb2.Tensor:
        """The average of a part as every member receives it: in the session's codec, whatever codec the senders
        used (hivemind answers in the sender's; a sparse codec must answer sparse senders with the sparse union)."""
        return self.codec.compress(averaged, CompressionInfo.from_tensor(averaged))

    def _get_peer_stub(self, peer):
        parts = self.tensor_part_container.num_parts_by_peer[self.ordered_peer_ids.index(peer)]
        return _ClosesAfterParts(super()._get_peer_stub(peer), parts, self.counters)

    async def rpc_aggregate_part(self, stream, context):
        async for message in super().rpc_aggregate_part(stream, context):
            yield message
        # the sender closes the stream once it holds every reply (which ends this handler at once);
        # the wait is only a bound for a sender that never does (reducer_timeout may be unset)
        await asyncio.sleep(self.reducer_timeout or SENDER_CLOSE_BOUND)

    async def _generate_input_for_peer(self, peer_index: int) -> AsyncIterator[averaging_pb2.AveragingData]:
        async for message in super()._generate_input_for_peer(peer_index):
            self.counters.add(sent=len(message.tensor_part.buffer))  # its answer is counted where it arrives
            yield message

    async def _accumulate_parts_streaming(self, stream, sender_index: int):
        part_index = 0
        try:
            async for tensor_part, weight, size in amap_in_executor(
                lambda msg: (deserialize_torch_tensor(msg.tensor_part), msg.weight, len(msg.tensor_part.buffer)),
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
                reply = self._encode(averaged)
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

    # hivemind caches the RPC list per class but reads the cache through inheritance: without these, a
    # plain DecentralizedAverager built first in a process would leave this class without rpc_download_update
    _rpc_handlers = None
    _stub_type = None

    def __init__(self, averaged_tensors: Sequence[torch.Tensor], dht, *, state_provider=None,
                 runner_type: type[ExactAllReduceRunner] = ExactAllReduceRunner,
                 round_states: str | Path | None = None, max_round_state_bytes: int = MAX_ROUND_STATE_BYTES,
                 kept_numel: int | None = None, **kwargs: Any):
        # the peers' RPC names carry the averager's class name, so a different runner is passed in
        # rather than set on a subclass (a subclass would never meet plain averagers)
        self.runner_type = runner_type
        self.counters = ByteCounters()
        self.state_provider = state_provider
        self._codec: CompressionBase = kwargs.get("compression") or NoCompression()
        # in shared memory before super() starts the averager process; two rounds are kept (slot round % 2), so
        # a validator still gets round r's update after the peer kept round r + 1's
        # a kept update is `kept_numel` values (the model's; the averaged buffer may hold padding besides)
        numel = kept_numel if kept_numel is not None else sum(tensor.numel() for tensor in averaged_tensors)
        self._kept = (KeptUpdate(numel), KeptUpdate(numel))
        self.round_states = None if round_states is None else Path(round_states)
        self.max_round_state_bytes = max_round_state_bytes
        super().__init__(averaged_tensors, dht, **kwargs)

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs) -> None:
        group_id = group_info.group_id if group_id is None else group_id
        runner = self.runner_type(
            p2p=self._p2p, servicer_type=type(self), prefix=self.prefix, tensors=tensors, group_id=group_id,
            ordered_peer_ids=group_info.peer_ids, counters=self.counters, codec=self._codec,
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

    async def rpc_join_group(  # typing's AsyncIterator: hivemind tells a streaming RPC by the hint's _name
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> typing.AsyncIterator[averaging_pb2.MessageFromLeader]:
        """hivemind's leader side of matchmaking, but a leader that sent BEGIN_ALLREDUCE keeps the stream
        open until the follower (which closes it once it read that message) does: a leader that closed at
        once sometimes lost that last message in p2pd, and its all-reduce then waited for a follower still
        looking for a group (the failure the reducer streams above had)."""
        began = False
        async with contextlib.aclosing(super().rpc_join_group(request, context)) as messages:
            async for message in messages:
                began = message.code == averaging_pb2.BEGIN_ALLREDUCE
                yield message
        if began:  # the follower's close ends this handler at once; the wait only bounds one that never closes
            await asyncio.sleep(SENDER_CLOSE_BOUND)

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

    def set_excluded(self, peer_ids: Sequence[str]) -> None:
        """Refuse to be in a group with these peers (base58 ids) from the next matchmaking on: as a leader this
        averager turns them away, as a follower it does not ask them to lead. A validator excluded them for a
        failed check; without this they would keep feeding their update into the honest peers' average."""
        future = MPFuture()
        self._outer_pipe.send(("_set_excluded", [], dict(peer_ids=list(peer_ids), future=future)))
        future.result()

    async def _set_excluded(self, peer_ids: list[str], future: MPFuture) -> None:
        try:
            excluding = _Excluding.of(self._matchmaking)
            excluding.peers = {PeerID.from_base58(peer) for peer in peer_ids}
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

    def verification_bytes(self) -> tuple[int, int]:
        """(sent, received) bytes of kept updates served to and downloaded from other peers."""
        return int(self.counters.verification_sent.value), int(self.counters.verification_received.value)

    def keep_update(self, round_: int, flat: torch.Tensor) -> None:
        """Keep this peer's pseudo-gradient of `round_` (float32, as many values as the averaged tensors)
        for other peers to download; it replaces the one of round `round_ - 2` (and of `round_`)."""
        self._kept[round_ % 2].keep(round_, flat)

    def _slot(self, round_: int | None) -> KeptUpdate:
        """The slot holding `round_` (None: the newest round kept)."""
        if round_ is None:
            return max(self._kept, key=lambda kept: kept.round.value)
        return self._kept[round_ % 2]

    async def rpc_download_update(  # typing's AsyncIterator: hivemind tells a streaming RPC by the hint's _name
        self, request: averaging_pb2.DownloadData, _context: P2PContext
    ) -> typing.AsyncIterator[averaging_pb2.DownloadData]:
        """The kept update of the round the request's metadata names ({"round": r}; none: the newest) as exact
        fp32 parts of at most PART_VALUES values; the first message's metadata is {"round": r, "numel": n}, or
        {"round": -1} alone when that round is not kept."""
        wanted = _requested_round(request.metadata)
        kept = self._slot(wanted)
        stable = await kept.stable()
        if stable is None or stable[1] < 0 or (wanted is not None and stable[1] != wanted):
            yield averaging_pb2.DownloadData(metadata=MSGPackSerializer.dumps({"round": -1}))
            return
        version, round_ = stable
        numel = kept.flat.numel()
        metadata = MSGPackSerializer.dumps({"round": round_, "numel": numel})
        for start in range(0, numel, PART_VALUES):
            part = serialize_torch_tensor(kept.flat[start:start + PART_VALUES])
            if not kept.unchanged_since(version):
                log.info("stopped serving the update of round %d: the next one was kept meanwhile", round_)
                return  # the downloader sees fewer values than announced and drops what it got
            self.counters.add_verification(sent=len(part.buffer))
            yield averaging_pb2.DownloadData(tensor_part=part, metadata=metadata)
            metadata = b""

    def download_update(
        self, peer_id: str, timeout: float, round_: int | None = None
    ) -> tuple[int, torch.Tensor] | None:
        """(round, flat fp32 update) that peer `peer_id` (base58) keeps for `round_` (None: its newest), downloaded
        by the averager process; None when it keeps no such update, cannot be reached within `timeout` seconds,
        or sent anything malformed."""
        return self._ask("_download_update", f"the update of {peer_id}",
                         dict(peer_id=peer_id, timeout=timeout, round_=round_))

    def _ask(self, method: str, what: str, kwargs: dict[str, Any]) -> Any:
        """Run `method(**kwargs)` in the averager's process and wait for its answer (at most its `timeout` plus
        PIPE_GRACE; None when it gives none in time)."""
        future: MPFuture = MPFuture()
        try:
            self._outer_pipe.send((method, [], dict(kwargs, future=future)))
            return future.result(timeout=kwargs["timeout"] + PIPE_GRACE)
        except TimeoutError:
            log.warning("the averager process did not answer the download of %s in time", what)
        except (OSError, EOFError) as exc:
            log.warning("could not ask the averager process to download %s: %r", what, exc)
        return None

    async def _download_update(self, peer_id: str, timeout: float, round_: int | None, future: MPFuture) -> None:
        await _deliver(future, self._fetch_update(peer_id, round_), timeout, f"the update of {peer_id}")

    async def _fetch_update(self, peer_id: str, round_: int | None) -> tuple[int, torch.Tensor] | None:
        peer = PeerID.from_base58(peer_id)
        if peer == self.peer_id:
            return self._own_update(round_)
        stub = self.get_stub(self._p2p, peer, namespace=self.prefix)
        request = b"" if round_ is None else MSGPackSerializer.dumps({"round": round_})
        stream = await stub.rpc_download_update(averaging_pb2.DownloadData(metadata=request))
        try:
            got = await self._receive_update(peer_id, stream)
        finally:
            await stream.aclose()
        if got is not None and round_ is not None and got[0] != round_:
            raise BadUpdate(f"it served round {got[0]} when asked for round {round_}")
        return got

    def _own_update(self, wanted: int | None) -> tuple[int, torch.Tensor] | None:
        kept = self._slot(wanted)
        version, round_ = kept.version.value, kept.round.value
        flat = kept.flat.clone()
        if round_ < 0 or version % 2 or not kept.unchanged_since(version) or wanted not in (None, round_):
            return None
        return round_, flat.share_memory_()

    async def _receive_update(
        self, peer_id: str, stream: AsyncIterator[averaging_pb2.DownloadData]
    ) -> tuple[int, torch.Tensor] | None:
        expected = self._kept[0].flat.numel()
        round_: int | None = None
        flat = torch.empty(0)
        filled = 0
        async for message in stream:
            if round_ is None:
                round_ = _update_round(message.metadata, expected)
                if round_ < 0:
                    log.info("%s keeps no update yet", peer_id)
                    return None
                flat = torch.empty(expected, dtype=torch.float32).share_memory_()
            part = message.tensor_part
            self.counters.add_verification(received=len(part.buffer))
            values = _part_values(part)
            if filled + values.size > expected:
                raise BadUpdate(f"it sent more than the {expected} values it announced")
            flat[filled:filled + values.size].numpy()[:] = values
            filled += values.size
        if round_ is None:
            raise BadUpdate("it answered nothing")
        if filled != expected:
            raise BadUpdate(f"it sent {filled} of {expected} values (the stream ended early)")
        return round_, flat


    # --- round states (a validator's spot check, core/spot_check.py) ------------------------------------------------
    def _round_state_file(self, round_: int, index: int) -> Path | None:
        if self.round_states is None:
            return None
        return self.round_states / str(round_) / f"{index}.pt"

    async def rpc_download_round_state(  # typing's AsyncIterator: hivemind tells a streaming RPC by the hint's _name
        self, request: averaging_pb2.DownloadData, _context: P2PContext
    ) -> typing.AsyncIterator[averaging_pb2.DownloadData]:
        """The file this peer keeps of its training state at commit point `index` of round `round` (the request's
        metadata {"round": r, "index": j}) as raw byte parts; the first message's metadata is
        {"round": r, "index": j, "bytes": n}, or {"round": -1} alone when it keeps no such file (or a larger one
        than `max_round_state_bytes`)."""
        wanted = _requested_state(request.metadata)
        path = None if wanted is None else self._round_state_file(*wanted)
        with contextlib.ExitStack() as stack:
            try:
                handle = None if path is None else stack.enter_context(open(path, "rb"))
            except OSError:
                handle = None
            # the file is replaced, never rewritten: what this handle reads is one whole state
            size = 0 if handle is None else os.fstat(handle.fileno()).st_size
            if wanted is None or handle is None or not 0 < size <= self.max_round_state_bytes:
                if size > self.max_round_state_bytes:
                    log.warning("not serving round state %s: %d bytes exceed the cap", path, size)
                yield averaging_pb2.DownloadData(metadata=MSGPackSerializer.dumps({"round": -1}))
                return
            metadata = MSGPackSerializer.dumps({"round": wanted[0], "index": wanted[1], "bytes": size})
            while True:
                chunk = await asyncio.to_thread(handle.read, STATE_PART_BYTES)
                if not chunk:
                    break
                self.counters.add_verification(sent=len(chunk))
                part = runtime_pb2.Tensor(buffer=chunk, size=[len(chunk)], dtype="uint8")
                yield averaging_pb2.DownloadData(tensor_part=part, metadata=metadata)
                metadata = b""

    def download_round_state(self, peer_id: str, round_: int, index: int, timeout: float,
                             max_bytes: int | None = None) -> bytes | None:
        """The bytes of the file peer `peer_id` (base58) keeps of its state at commit point `index` of round `round_`,
        downloaded by the averager process; None when it keeps none, sends more than `max_bytes` (default
        `max_round_state_bytes`) or anything malformed, or cannot be reached within `timeout` seconds."""
        limit = self.max_round_state_bytes if max_bytes is None else max_bytes
        return self._ask("_download_round_state", f"the round state of {peer_id}",
                         dict(peer_id=peer_id, round_=round_, index=index, timeout=timeout, max_bytes=limit))

    async def _download_round_state(self, peer_id: str, round_: int, index: int, timeout: float, max_bytes: int,
                                    future: MPFuture) -> None:
        await _deliver(future, self._fetch_round_state(peer_id, round_, index, max_bytes), timeout,
                       f"the round state of {peer_id}")

    async def _fetch_round_state(self, peer_id: str, round_: int, index: int, max_bytes: int) -> bytes | None:
        peer = PeerID.from_base58(peer_id)
        if peer == self.peer_id:
            path = self._round_state_file(round_, index)
            if path is None or not path.is_file() or path.stat().st_size > max_bytes:
                return None
            return await asyncio.to_thread(path.read_bytes)
        stub = self.get_stub(self._p2p, peer, namespace=self.prefix)
        request = MSGPackSerializer.dumps({"round": round_, "index": index})
        stream = await stub.rpc_download_round_state(averaging_pb2.DownloadData(metadata=request))
        try:
            return await self._receive_round_state(stream, (round_, index), max_bytes)
        finally:
            await stream.aclose()

    async def _receive_round_state(self, stream: AsyncIterator[averaging_pb2.DownloadData], wanted: tuple[int, int],
                                   max_bytes: int) -> bytes | None:
        expected: int | None = None
        chunks: list[bytes] = []
        received = 0
        async for message in stream:
            if expected is None:
                expected = _state_header(message.metadata, wanted, max_bytes)
                if expected < 0:
                    return None
            part = message.tensor_part
            if part.dtype != "uint8" or part.compression != runtime_pb2.CompressionType.NONE:
                raise BadUpdate(f"a round state part is {part.dtype or 'untyped'}, not raw bytes")
            self.counters.add_verification(received=len(part.buffer))
            received += len(part.buffer)
            if received > expected:
                raise BadUpdate(f"it sent more than the {expected} bytes it announced")
            chunks.append(part.buffer)
        if expected is None:
            raise BadUpdate("it answered nothing")
        if received != expected:
            raise BadUpdate(f"it sent {received} of {expected} bytes (the stream ended early)")
        return b"".join(chunks)


def _requested_state(metadata: bytes) -> tuple[int, int] | None:
    """(round, index) a round state request names; None for a malformed request."""
    if not metadata or len(metadata) > 64:
        return None
    try:
        request = MSGPackSerializer.loads(metadata)
    except Exception:
        return None
    if not isinstance(request, dict):
        return None
    round_, index = request.get("round"), request.get("index")
    if type(round_) is not int or type(index) is not int:
        return None
    if not 0 <= round_ < 2**31 or not 0 <= index <= MAX_STATE_INDEX:
        return None
    return round_, index


def _state_header(metadata: bytes, wanted: tuple[int, int], max_bytes: int) -> int:
    """The size a served round state's first message announces (-1: none kept); BadUpdate if malformed, another
    state than asked for, or larger than `max_bytes`."""
    try:
        header = MSGPackSerializer.loads(metadata)
    except Exception as exc:
        raise BadUpdate(f"its first message has no readable metadata ({exc!r})") from exc
    if not isinstance(header, dict) or type(header.get("round")) is not int:
        raise BadUpdate("its first message does not name a round")
    if header["round"] == -1:
        return -1
    if (header["round"], header.get("index")) != wanted:
        raise BadUpdate(f"it served state {header['round']}/{header.get('index')!r} when asked for {wanted}")
    size = header.get("bytes")
    if type(size) is not int or not 0 < size <= max_bytes:
        raise BadUpdate(f"it announces {size!r} bytes (at most {max_bytes} accepted)")
    return size


async def _deliver(future: MPFuture, download: typing.Awaitable[Any], timeout: float, what: str) -> None:
    """Run `download` (at most `timeout` seconds) in the averager's process and hand its result, or None when it
    failed (logged with why), to the training process waiting on `future`."""
    result = None
    try:
        result = await asyncio.wait_for(download, timeout)
    except TimeoutError:
        log.warning("could not download %s within %.1f s", what, timeout)
    except BadUpdate as exc:
        log.warning("dropped %s: %s", what, exc)
    except Exception as exc:
        log.warning("could not download %s: %r", what, exc)
    try:
        future.set_result(result)
    except Exception as exc:  # the caller gave up waiting and dropped the future
        log.debug("%s not delivered: %r", what, exc)


def _requested_round(metadata: bytes) -> int | None:
    """The round a download request names (None: the newest kept; also for a malformed request)."""
    if not metadata or len(metadata) > 64:
        return None
    try:
        request = MSGPackSerializer.loads(metadata)
    except Exception:
        return None
    round_ = request.get("round") if isinstance(request, dict) else None
    return round_ if type(round_) is int and 0 <= round_ < 2**31 else None


def _update_round(metadata: bytes, expected: int) -> int:
    """The round a served update's first message announces (-1: nothing kept); BadUpdate if malformed."""
    try:
        header = MSGPackSerializer.loads(metadata)
    except Exception as exc:
        raise BadUpdate(f"its first message has no readable metadata ({exc!r})") from exc
    if not isinstance(header, dict) or type(header.get("round")) is not int:
        raise BadUpdate("its first message does not name a round")
    round_ = header["round"]
    if round_ == -1:
        return -1
    if not 0 <= round_ < 2**31:
        raise BadUpdate(f"it names round {round_}")
    if header.get("numel") != expected:
        raise BadUpdate(f"it announces {header.get('numel')!r} values, this model has {expected}")
    return round_


def _part_values(part: runtime_pb2.Tensor) -> np.ndarray:
    """The fp32 values of one served part, checked to be exactly that (uncompressed, 1-D, whole)."""
    if part.compression != runtime_pb2.CompressionType.NONE or part.dtype != "float32":
        raise BadUpdate(f"a part is {part.dtype or 'untyped'} with compression {part.compression}, not plain float32")
    if len(part.size) != 1 or not 0 < part.size[0] <= PART_VALUES or len(part.buffer) != 4 * part.size[0]:
        raise BadUpdate(f"a part of shape {list(part.size)} has {len(part.buffer)} bytes")
    return np.frombuffer(part.buffer, dtype="<f4")
