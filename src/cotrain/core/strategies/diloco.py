"""DiLoCo over hivemind: each peer trains alone for `inner_steps` (H) optimizer steps, then the
peers average their pseudo-gradients (global − local params) and take one outer SGD step with
Nesterov momentum on the global params, which are copied back into every model.

One round (outer step r → r+1), on every peer:
1. pseudo-gradient into the averager's buffers; publish "ready for round r+1" in the progress record;
2. wait until every live peer (fresh progress record) is ready too, so nobody misses the group;
   if some peer already finished round r+1, this peer is behind: download the state instead;
3. size matchmaking to the live peers: groups of at least the quorum of step 4 (a smaller group
   could never apply the round and would only waste it), assembled as soon as every ready peer
   joined; then all-reduce with `ExactAverager` (byte-identical result everywhere) and gather each
   member's round number and view of the live peers;
4. the group applies the round only if every member was in round r+1, it has at least `min_peers`
   members and more than half of the live peers any member saw (so two disjoint groups cannot
   both apply a round while the peers agree on who is live); the decision uses only gathered
   data, so the whole group decides alike.
   Otherwise the round is discarded and retried; a peer that failed while the others went on
   downloads their state (`load_state_from_peers`). Un-averaged work is never applied.
A joining peer downloads the global params, outer momentum and round from a peer and then
takes part in the next round. Outer state lives on the CPU in fp32.

A peer with several GPUs (`gpus_per_node > 1`, launched by torchrun) trains its inner steps
with DDP across them; only its rank 0 joins the DHT, averages and steps the outer optimizer, then
broadcasts the new global params to the peer's other ranks. Those local all-reduces never leave
the machine, so the bytes counted are the averager's alone.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch
from torch import nn

from cotrain.core.strategies.base import OuterStepReport, Strategy
from cotrain.core.strategies.round_metrics import RoundClock, short_peer_id, train_seconds_of
from cotrain.core.strategies.sanity import MAX_AVERAGE_RATIO
from cotrain.core.strategies.verified_rounds import RoundValidator, RoundWork, receipt_of
from cotrain.core.system_metrics import merge_nodes
from cotrain.p2p.verification import EXCLUDING

if TYPE_CHECKING:
    from cotrain.core.strategies.ddp import DdpStrategy

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
VALIDATOR_GRACE = 10.0  # seconds a peer stays after its last round so validators can download its update
HELD_OUT_SAMPLES = 32  # val samples a validator measures each update's usefulness on
VOUCH_WAIT = 5.0  # seconds to wait for the live peers' records of a downloaded state's outer step
POLL_SECONDS = 0.2


def quorum_size(live: int, min_peers: int) -> int:
    """The smallest group that may apply a round: `min_peers`, and more than half of `live` peers."""
    return max(min_peers, live // 2 + 1)


def params_hash(tensors: Sequence[torch.Tensor]) -> str:
    """A short hash of the exact bytes of `tensors` (equal on peers holding identical params)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class DilocoStrategy(Strategy):
    name = "diloco"

    def __init__(self, config, device: torch.device):
        super().__init__(config, device)
        # the processes of this peer (torchrun, one per GPU): DDP for the inner steps
        self.local: DdpStrategy | None = None
        if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from cotrain.core.strategies.ddp import DdpStrategy

            self.local = DdpStrategy(config, device)
            self.rank, self.world_size = self.local.rank, self.local.world_size
        self.diloco = config.distributed.diloco
        self.session_id = config.session.id or "session"
        self.outer_step = 0  # rounds applied so far
        self.ready_round = 0
        self.inner_done = 0  # inner steps since the last round
        self.step = 0
        self.last_hash: str | None = None
        self.tokens_per_second = 0.0
        self._last_step_time: float | None = None
        self._state_lock = threading.Lock()
        self._extra_bytes = [0, 0]  # state served to / downloaded from peers
        self._participants_cache = (0.0, 1)
        self._known_peers: dict[str, Any] = {}
        self._peer_events: list[dict[str, Any]] = []
        self.model: nn.Module | None = None
        self.round_clock = RoundClock.start((0, 0))  # restarted when training starts and after every round
        self.own_node: dict[str, Any] | None = None  # this peer's machine, in its record and its events
        self.last_round: dict[str, Any] | None = None  # its last round block, in its record
        self.work: RoundWork | None = None  # this round's public shard and parameter hashes
        self.validator: RoundValidator | None = None  # judges every round, with `diloco.validate`
        self._verdict_events: list[dict[str, Any]] = []
        self.last_round_at: float | None = None  # monotonic time of this peer's last averaged round
        self.contributed = False  # whether this process has averaged a round yet
        self._own_norm = 0.0  # norm of this peer's update of the current round
        self.exclusions: dict[str, int] = {}  # peer a trusted validator failed → the first round it is left out of
        self.excluded: set[str] = set()  # those left out of the current round: never averaged with again
        self._data: tuple[Any, Any, Any] | None = None  # train samples, val samples, loss_of (use_data)
        self._steps: tuple[Any, torch.optim.Optimizer, torch.amp.GradScaler] | None = None  # use_step_math
        # compression = topk: what this peer left out of the updates it sent (set up with the global params), and
        # what it leaves out of the round under way (kept if the round is applied)
        self.error_feedback: list[torch.Tensor] | None = None
        self._pending_error: list[torch.Tensor] | None = None

    # --- processes -------------------------------------------------------------------
    def setup(self) -> None:
        if self.local is not None:
            self.local.setup()
        if self.is_main:
            self._join_network()

    def _join_network(self) -> None:
        from cotrain.p2p.dht import start_dht, visible_maddrs
        from cotrain.p2p.records import ProgressPublisher

        self.dht = start_dht(
            self.diloco.initial_peers, self.diloco.host_maddrs, self.diloco.announce_maddrs,
            identity_path=self._identity_path(),
        )
        self.peer_id = str(self.dht.peer_id)
        addresses = visible_maddrs(self.dht)
        print(
            f"diloco peer {self.peer_id} of session {self.session_id}; others join with "
            f"initial_peers = {addresses}",
            file=sys.stderr, flush=True,
        )
        self.publisher = ProgressPublisher(self.dht, self._snapshot, interval=self.diloco.progress_interval).start()

    def _identity_path(self) -> Path:
        """The peer's libp2p key, beside its checkpoints: a restarted peer keeps its peer id (so its
        contribution record and its sample order continue)."""
        from cotrain.p2p.identity import identity_path

        return identity_path(self.config.checkpoint.output_path, self.session_id)

    def shutdown(self) -> None:
        publisher = getattr(self, "publisher", None)
        if publisher is not None:  # the others stop waiting for this peer at once...
            publisher.stop()
            self._publish_leaving()
        self._stay_for_validators()  # ...while its averager still serves its last update
        for name in ("averager", "dht"):
            part = getattr(self, name, None)
            if part is not None:
                try:
                    part.shutdown()
                except Exception as exc:  # leaving must never fail the run
                    log.warning("could not shut down the %s cleanly: %s", name, exc)
        if self.local is not None:
            self.local.shutdown()

    def _stay_for_validators(self) -> None:
        """After its last round a peer keeps serving its update a little longer: a validator downloads it once
        the round's receipts are in, and an update it cannot download does not count."""
        if self.last_round_at is None or not set(self.diloco.validators) - {getattr(self, "peer_id", "")}:
            return  # nobody this peer knows of validates it (its own judging is done by its last round's end)
        wait = self.last_round_at + VALIDATOR_GRACE - time.monotonic()
        if wait > 0:
            print(f"diloco: serving this peer's last update to validators for {wait:.0f} s before leaving",
                  file=sys.stderr, flush=True)
            time.sleep(wait)

    # --- this peer's own processes ---------------------------------------------------------
    def barrier(self) -> None:
        if self.local is not None:
            self.local.barrier()

    def any_process(self, flag: bool) -> bool:
        return self.local.any_process(flag) if self.local is not None else flag

    def mean_across_processes(self, value: float) -> float:
        return self.local.mean_across_processes(value) if self.local is not None else value

    def data_shard(self) -> tuple[int, int]:
        return self.local.data_shard() if self.local is not None else (0, 1)

    def accumulation_context(self, model: nn.Module, is_last_micro_batch: bool):
        if self.local is not None:
            return self.local.accumulation_context(model, is_last_micro_batch)
        return super().accumulation_context(model, is_last_micro_batch)

    def _broadcast_from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` as rank 0 of this peer has it, on every rank of the peer."""
        import torch.distributed as dist

        assert self.local is not None
        moved = tensor.to(self.local.collective_device())
        dist.broadcast(moved, src=0)
        return moved.cpu()

    def data_seed(self) -> int:
        """Each peer draws its own sample order (from its peer id); its processes share it."""
        seed = 0
        if self.is_main:
            own = int.from_bytes(hashlib.sha256(self.peer_id.encode()).digest()[:4], "big")
            seed = (self.config.train.seed + own) % (2**31)
        if self.local is not None:
            seed = int(self._broadcast_from_main(torch.tensor([seed], dtype=torch.int64)).item())
        return seed

    # --- model -------------------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> nn.Module:
        from cotrain.p2p.lifetime import dies_with_parent

        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.global_params = [p.detach().to("cpu", torch.float32).clone() for p in self.params]
        if self.diloco.compression == "topk":
            self.error_feedback = [torch.zeros_like(g) for g in self.global_params]
        self.outer_optimizer = torch.optim.SGD(
            self.global_params, lr=self.diloco.outer_lr, momentum=self.diloco.outer_momentum,
            nesterov=self.diloco.nesterov and self.diloco.outer_momentum > 0,
        )
        # one flat buffer: the all-reduce splits it into parts of equal size, so 8-bit codebooks
        # and message headers stay negligible even for the many tiny norm weights
        self.last_hash = params_hash(self.global_params)
        self.work = RoundWork(
            session_id=self.session_id, peer_id=getattr(self, "peer_id", ""),
            shard_samples=self.diloco.shard_size(self.config.train.batch_size), batch_size=self.config.train.batch_size,
            commit_every=self.diloco.commit_interval, states=self._round_states(),
        )
        if self.is_main:
            self.averaged = [torch.zeros(sum(self._segment_sizes()))]
            with dies_with_parent():  # no orphaned averager after a kill -9
                self.averager = self._start_averager(self.diloco.matchmaking_time)
            self._join_running_session()
            self.round_clock = RoundClock.start(self.comm_bytes())
            if self.diloco.validate:
                self.validator = RoundValidator(self.dht, self.averager, self.session_id, self.peer_id, self._judge,
                                                audit_fraction=self.diloco.audit_fraction)
        if self.local is None:
            return model
        self._share_global_state()  # the state rank 0 may have downloaded
        return self.local.wrap_model(model)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.local.unwrap(model) if self.local is not None else model

    def _round_states(self) -> Path | None:
        """Where this peer keeps its training state at commit points: only when validators replay inner steps."""
        from cotrain.core.round_states import round_states_dir
        from cotrain.core.spot_check import spot_checks_apply

        if not self.is_main or not spot_checks_apply(self.config):
            return None
        return round_states_dir(self.config.checkpoint.output_path, self.session_id)

    def _round_state_cap(self) -> int:
        """The most bytes a round state may have: params and two optimizer moments each, and room for the rest."""
        return 4 * sum(p.numel() * p.element_size() for p in self.params) + 2**20

    def _start_averager(self, matchmaking: float):
        from cotrain.p2p.averager import ExactAverager
        from cotrain.p2p.compression import make_compression

        return ExactAverager(
            self.averaged, self.dht, start=True,
            prefix=f"cotrain_{self.session_id}".replace(".", "_"),
            target_group_size=None, min_group_size=self.diloco.min_peers,
            min_matchmaking_time=matchmaking, request_timeout=min(3.0, matchmaking / 2),
            allreduce_timeout=self.diloco.averaging_timeout, next_chunk_timeout=5.0,
            compression=make_compression(self.diloco.compression, self.diloco.topk_fraction),
            allow_state_sharing=True, declare_state_period=5.0, state_provider=self._state_for_peers,
            round_states=self.work.states if self.work is not None else None,
            max_round_state_bytes=self._round_state_cap(), kept_numel=sum(g.numel() for g in self.global_params),
        )

    def after_optimizer_step(self, step: int, model: nn.Module) -> OuterStepReport | None:
        now = time.perf_counter()
        if self._last_step_time is not None:
            tokens = self.config.train.batch_size * self.config.data.seq_length
            rate = tokens / max(now - self._last_step_time, 1e-9)
            self.tokens_per_second = rate if not self.tokens_per_second else 0.8 * self.tokens_per_second + 0.2 * rate
        self.step = step
        self.inner_done += 1
        if self.is_main and self.work is not None:
            self.work.after_inner_step(self.inner_done, lambda: params_hash(self.params))
            if self.work.is_commit_point(self.inner_done, self.diloco.inner_steps):
                self._keep_state()
        if self.inner_done < self.diloco.inner_steps:
            self._last_step_time = time.perf_counter()
            return None
        report = self._outer_round() if self.is_main else None
        if self.local is not None:
            self._share_global_state()
        self.inner_done = 0
        if self.work is not None:
            self.work.round = 0  # the next inner step begins a round's work anew (the same shard after a failed one)
        self.round_clock = RoundClock.start(self.comm_bytes())
        self._last_step_time = time.perf_counter()  # the round's wait is not training time
        return report

    # --- one round ---------------------------------------------------------------------
    def _outer_round(self) -> OuterStepReport | None:
        round_ = self.outer_step + 1
        started = time.perf_counter()
        clock = self.round_clock
        clock.inner_steps_done()
        update: torch.Tensor | None = None
        self._refresh_exclusions(round_)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            with clock.phase("averaging"):
                self._fill_pseudo_gradient()
                if update is None:
                    update, update_hash = self._commit(round_)
            self.ready_round = round_
            with clock.phase("wait"):
                self.publisher.publish_now()
                others = self._wait_until_peers_ready(round_)
            self._note_peers(others)  # the freshest view of the others (and their machines) for the events
            if self._others_finished(others, round_):
                return self._catch_up("the other peers finished this round without this peer")
            if 1 + len(others) < self.diloco.min_peers:
                break  # nobody to average with
            with clock.phase("wait"):
                self._size_groups(round_, others)
            gathered = self._average(round_, live=1 + len(others), clock=clock, update_hash=update_hash)
            if gathered is not None and self._refuse_average(round_, gathered, update):
                gathered = None
            if gathered is not None:
                with clock.phase("averaging"):
                    base_hash, base_params = self.last_hash or "", [g.clone() for g in self.global_params]
                    result_hash = self._averaged_digest()
                    self._apply_outer_step()
                self._publish_receipt(round_, gathered, result_hash)
                self.last_round_at = time.monotonic()
                if self.validator is not None:
                    self._validate(round_, base_hash, base_params, gathered, update)
                block = clock.block(round_, short_peer_id(self.peer_id), self.comm_bytes(),
                                    train_seconds_of(gathered))
                self.last_round = {k: v for k, v in block.items() if k != "peers"}
                self.publisher.publish_now()
                extra = {
                    "group_size": len(gathered), "round_seconds": round(time.perf_counter() - started, 3),
                    "round_attempts": attempt, "round": block,
                    # served to / downloaded from validators, apart from the averaging bytes
                    "verification_bytes": list(self.averager.verification_bytes()),
                }
                if not self.contributed:  # how long this peer took from its process's start to its first round
                    self.contributed = True
                    extra["first_contribution_seconds"] = round(time.time() - psutil.Process().create_time(), 2)
                return OuterStepReport(
                    outer_step=self.outer_step, participants=len(gathered), params_hash=self.last_hash, extra=extra,
                )
            if self._others_finished(self._live_records(), round_):
                return self._catch_up("this peer's round failed while the others went on")
            log.warning("outer round %d failed (attempt %d of %d); retrying", round_, attempt, MAX_ATTEMPTS)
        print(
            f"diloco: outer round {round_} could not be averaged (min_peers = {self.diloco.min_peers}); "
            "discarding this peer's last inner steps and continuing from the global params",
            file=sys.stderr, flush=True,
        )
        self._reset_model_to_global()
        return None

    def _fill_pseudo_gradient(self) -> None:
        with torch.no_grad(), self.averager.get_tensors() as (flat,):
            for view, global_param, param in zip(self._views(flat), self.global_params, self.params):
                torch.sub(global_param, param.detach().to("cpu", torch.float32), out=view)
            if self.error_feedback is not None:
                self._pending_error = self._sparsify(self._segments(flat))

    @torch.no_grad()
    def _sparsify(self, segments: list[torch.Tensor]) -> list[torch.Tensor]:
        """compression = topk: each pseudo-gradient plus what this peer left out of its earlier rounds (error
        feedback) becomes its top-k entries per chunk in 4-bit values (what the codec sends, exactly); the rest,
        rounding included, is what it will have left out after this round. Computed from the error feedback
        before the round, so a retried round sends the same update."""
        from cotrain.p2p.compression import top_k_update

        assert self.error_feedback is not None
        pending = []
        for segment, error in zip(segments, self.error_feedback):
            accumulated = segment[: error.numel()].add_(error.reshape(-1)).clone()
            segment.copy_(top_k_update(segment, self.diloco.topk_fraction))
            pending.append(accumulated.sub_(segment[: error.numel()]).view_as(error))
        return pending

    def _segment_sizes(self) -> list[int]:
        """Each parameter's room in the averager's flat buffer: its size, rounded up to whole top-k chunks with
        compression = topk (chunks never mix two tensors; the padding stays zero and costs no bytes)."""
        from cotrain.p2p.compression import SPARSE_BLOCK

        block = SPARSE_BLOCK if self.error_feedback is not None else 1
        return [math.ceil(g.numel() / block) * block for g in self.global_params]

    def _segments(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return list(flat.split(self._segment_sizes()))

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of the flat buffer shaped like each parameter."""
        return [segment[: g.numel()].view_as(g) for segment, g in zip(self._segments(flat), self.global_params)]

    def _others_finished(self, records, round_: int) -> bool:
        """Whether enough of the live peers finished `round_` to have applied it (a quorum of them): one peer
        claiming to be ahead alone is not followed, so a peer that applied an average the others refused as
        absurd (core/strategies/sanity.py) cannot make them download its state."""
        ahead = sum(1 for r in records if r.outer_step >= round_)
        return ahead > 0 and ahead >= quorum_size(1 + len(records), self.diloco.min_peers)

    def _wait_until_peers_ready(self, round_: int):
        """Wait (at most averaging_timeout) for `min_peers` and for every live peer to be ready
        for `round_`; the live records of the others."""
        deadline = time.monotonic() + self.diloco.averaging_timeout
        while True:
            others = self._live_records()
            behind = [r for r in others if r.ready_round < round_ and r.outer_step < round_]
            enough = 1 + len(others) >= self.diloco.min_peers
            if (enough and not behind) or self._others_finished(others, round_) or time.monotonic() > deadline:
                return others
            time.sleep(POLL_SECONDS)

    def _size_groups(self, round_: int, others) -> None:
        """This round's matchmaking: with hivemind's fixed `min_group_size` (min_peers, default 1) a
        leader whose matchmaking time ran out assembled whoever had joined it yet, so live peers split
        into groups ({A, B} and {C}, or three groups of one) that the quorum then discarded."""
        live = 1 + len(others)
        ready = 1 + sum(1 for r in others if r.ready_round >= round_)
        quorum = quorum_size(live, self.diloco.min_peers)
        try:
            self.averager.set_group_size(quorum, max(ready, quorum))
        except Exception as exc:  # the averager process is gone: the step below fails and says so
            log.warning("could not size round %d's group: %s", round_, exc)

    def _average(self, round_: int, live: int, clock: RoundClock, update_hash: str) -> dict | None:
        """All-reduce the pseudo-gradients; the gathered metadata if the group may apply the round.
        The step's time goes to `clock`: its all-reduce is averaging, its matchmaking waiting."""
        began, allreduce_before = time.perf_counter(), self.averager.allreduce_seconds()
        try:
            gathered = self.averager.step(
                gather={"round": round_, "live": live, "train_seconds": round(clock.train, 3), "update": update_hash},
                timeout=self.diloco.averaging_timeout, allow_retries=False,
            )
        except Exception as exc:  # hivemind reports failed rounds as exceptions
            log.warning("averaging round %d failed: %s", round_, exc)
            return None
        finally:
            allreduce = self.averager.allreduce_seconds() - allreduce_before
            clock.add(averaging=allreduce, wait=max(time.perf_counter() - began - allreduce, 0.0))
        if not gathered:
            return None
        members = list(gathered.values())
        same_round = all(isinstance(m, dict) and m.get("round") == round_ for m in members)
        largest_view = max(int(m.get("live", 1)) for m in members) if same_round else 0
        if same_round and len(members) >= quorum_size(largest_view, self.diloco.min_peers):
            return gathered
        log.warning("round %d: group of %d does not make a quorum (%s); discarded", round_, len(members), members)
        return None

    # --- verification (core/strategies/verified_rounds.py) ----------------------------------
    def round_batch_indices(self, step: int, schedule) -> torch.Tensor | None:
        """Inner step `inner_done` of this round trains on the round's public shard (`core/shards.py`)."""
        if self.work is None:
            return None
        if self.work.round != self.outer_step + 1:
            seed = None
            if self.local is not None:  # rank 0 alone knows the peer id and the params hash
                mine = self.work.seed_for(self.outer_step + 1, self.last_hash or "") if self.is_main else 0
                seed = int(self._broadcast_from_main(torch.tensor([mine], dtype=torch.int64)).item())
            self.work.begin(self.outer_step + 1, self.last_hash or "", schedule.plan.samples, seed,
                            first_step=step - self.inner_done)
            if self.is_main and self.work.is_commit_point(self.inner_done, self.diloco.inner_steps):
                self._keep_state()
        return self.work.batch(self.inner_done, self.config.train.batch_size)

    def use_step_math(self, step_math, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self._steps = (step_math, optimizer, scaler)
        if self.validator is not None and self.work is not None and self.work.states is not None:
            self.validator.spot_checker = self._spot_checker(step_math)

    def _keep_state(self) -> None:
        """This peer's training state at a commit point of the round, for validators' spot checks."""
        if self.work is None or self.work.states is None or self._steps is None:
            return
        _, optimizer, scaler = self._steps
        self.work.keep_state(self.inner_done, self.params, optimizer, scaler)

    def _spot_checker(self, step_math):
        from cotrain.core.optim import build_optimizer
        from cotrain.core.spot_check import SpotChecker
        from cotrain.core.strategies.verified_rounds import DOWNLOAD_TIMEOUT

        assert self._data is not None and self.model is not None and self.work is not None
        cap, train = self._round_state_cap(), self.config.train
        return SpotChecker(
            self.model, step_math, self, lambda model: build_optimizer(model, train),
            lambda: torch.amp.GradScaler("cpu", enabled=self.config.model.precision == "fp16"),
            lambda peer, round_, index: self.averager.download_round_state(
                peer, round_, index, timeout=DOWNLOAD_TIMEOUT, max_bytes=cap),
            session_id=self.session_id, num_samples=len(self._data[0]), shard_samples=self.work.shard_samples,
            batch_size=train.batch_size, commit_every=self.diloco.commit_interval, checks=self.diloco.spot_checks,
        )

    def use_data(self, train_samples, val_samples, loss_of) -> None:
        self._data = (train_samples, val_samples, loss_of)

    def _commit(self, round_: int) -> tuple[torch.Tensor, str]:
        """Keep this round's update where peers can download it, and publish its signed commitment."""
        from hivemind.utils import get_dht_time

        from cotrain.p2p.dht import signer
        from cotrain.p2p.digests import tensor_digest
        from cotrain.p2p.round_records import publish_commitment

        with self.averager.get_tensors() as (flat,):  # the parameters' values, without top-k's chunk padding
            update = torch.cat([view.reshape(-1) for view in self._views(flat)])
        digest = tensor_digest(update)
        self._own_norm = float(torch.linalg.vector_norm(update))
        try:
            self.averager.keep_update(round_, update)
            assert self.work is not None
            commitment = self.work.commitment(digest, self.inner_done, get_dht_time())
            publish_commitment(self.dht, signer(self.dht), commitment)
        except Exception as exc:  # an unpublished commitment costs this peer the round's credit, not the run
            log.warning("could not publish the commitment of round %d: %s", round_, exc)
        return update, digest

    def _refuse_average(self, round_: int, gathered: dict, update: torch.Tensor | None) -> bool:
        """Whether the group's averaged update is absurd (core/strategies/sanity.py) and must not touch the model.
        A validator judges the round anyway, so the member that sent it is caught and excluded."""
        from cotrain.core.strategies.sanity import averaged_update_problem

        with self.averager.get_tensors() as (flat,):
            problem = averaged_update_problem(flat, self._own_norm)
        if problem is None:
            return False
        print(f"diloco: round {round_}'s averaged update is refused: {problem}", file=sys.stderr, flush=True)
        if self.validator is not None and update is not None:
            self._validate(round_, self.last_hash or "", [g.clone() for g in self.global_params], gathered, update,
                           applied=False)
        return True

    def _averaged_digest(self) -> str:
        from cotrain.p2p.digests import tensor_digest

        with self.averager.get_tensors() as (flat,):
            return tensor_digest(flat)

    def _publish_receipt(self, round_: int, gathered: dict, result_hash: str) -> None:
        from hivemind.utils import get_dht_time

        from cotrain.p2p.dht import signer
        from cotrain.p2p.round_records import publish_receipt

        try:
            receipt = receipt_of(self.session_id, round_, self.peer_id, gathered, result_hash, get_dht_time())
            publish_receipt(self.dht, signer(self.dht), receipt)
        except Exception as exc:
            log.warning("could not publish the receipt of round %d: %s", round_, exc)

    def _validate(self, round_: int, base_hash: str, base_params: list[torch.Tensor], gathered: dict,
                  update: torch.Tensor | None, applied: bool = True) -> None:
        assert self.validator is not None and update is not None
        try:
            live = [r.peer_id for r in self._live_records()]
            event = self.validator.judge_round(round_, base_hash, base_params, gathered, update, live)
        except Exception as exc:  # a validator fault must not stop its own training; the round stays unjudged
            log.warning("could not validate round %d: %s", round_, exc)
            return
        self._verdict_events.append(event)
        failed = {v["peer_id"] for v in event["verdicts"] if v["reason"] in EXCLUDING and v["peer_id"] != self.peer_id}
        if failed - set(self.exclusions):
            self._exclude(failed - set(self.exclusions), round_, round_ + 2 if applied else round_)

    def _exclude(self, peers: set[str], round_: int, from_round: int) -> None:
        """Peers this validator caught in `round_`: left out from `from_round` on, by it and by the peers trusting
        it (the list it publishes). Two rounds later when the round was applied, so every honest peer has read
        the list before that round; the same round when it was refused (everyone is about to redo it)."""
        from cotrain.p2p.dht import signer
        from cotrain.p2p.round_records import publish_exclusions
        from cotrain.p2p.verification import Exclusions

        self.exclusions.update({peer: from_round for peer in peers})
        try:
            publish_exclusions(self.dht, signer(self.dht), Exclusions(
                peer_id=self.peer_id, session_id=self.session_id, round=round_, excluded=dict(self.exclusions),
                updated=0.0))
        except Exception as exc:
            log.warning("could not publish the exclusions of round %d: %s", round_, exc)

    def _refresh_exclusions(self, round_: int) -> None:
        """Before round `round_`: leave out the peers excluded from it by this peer (a validator) or by the
        validators it trusts (`diloco.validators`)."""
        from cotrain.p2p.round_records import fetch_exclusions

        trusted = set(self.diloco.validators) - {self.peer_id}
        if trusted:
            try:
                for peer, from_round in fetch_exclusions(self.dht, self.session_id, trusted).items():
                    self.exclusions[peer] = min(from_round, self.exclusions.get(peer, from_round))
            except Exception as exc:
                log.warning("could not read the validators' exclusions: %s", exc)
        excluded = {peer for peer, from_round in self.exclusions.items() if from_round <= round_} - {self.peer_id}
        if excluded == self.excluded:
            return
        print(f"diloco: from round {round_} on, not averaging with {', '.join(sorted(excluded - self.excluded))} "
              "(they failed a validator's check)", file=sys.stderr, flush=True)
        self.excluded = excluded
        try:
            self.averager.set_excluded(sorted(excluded))
        except Exception as exc:  # the averager process is gone: the next round fails and says so
            log.warning("could not exclude peers from matchmaking: %s", exc)

    def _judge(self, base_params: list[torch.Tensor]):
        from cotrain.core.validation import RoundJudge

        if self._data is None:
            raise RuntimeError("validation needs the trainer's data (use_data was not called)")
        train_samples, val_samples, loss_of = self._data
        assert self.model is not None
        return RoundJudge(
            model=self.model, base_params=base_params, loss_of=loss_of, samples=train_samples.get,
            num_samples=len(train_samples),
            heldout=lambda: val_samples.get(torch.arange(min(len(val_samples), HELD_OUT_SAMPLES))),
            shard_samples=self.work.shard_samples if self.work is not None else 0,
            batch_size=self.config.train.batch_size, seq_length=self.config.data.seq_length,
            session_id=self.session_id, receipt_quorum=self.diloco.receipt_quorum,
            own_data_margin=self.diloco.own_data_margin,
            max_update_norm=MAX_AVERAGE_RATIO * self._own_norm if self._own_norm > 0 else math.inf,
        )

    def verdict_events(self) -> list[dict[str, Any]]:
        events, self._verdict_events = self._verdict_events, []
        return events

    @torch.no_grad()
    def _apply_outer_step(self) -> None:
        with self._state_lock:
            with self.averager.get_tensors() as (flat,):
                for global_param, pseudo_gradient in zip(self.global_params, self._views(flat)):
                    global_param.grad = pseudo_gradient.clone()
            self.outer_optimizer.step()
            self.outer_optimizer.zero_grad(set_to_none=True)
            self.outer_step += 1
            if self._pending_error is not None:
                self.error_feedback, self._pending_error = self._pending_error, None
            self.last_hash = params_hash(self.global_params)
            self.averager.state_sharing_priority = float(self.outer_step)
        self._reset_model_to_global()

    @torch.no_grad()
    def _share_global_state(self) -> None:
        """Rank 0's global params and round on every rank of this peer, and in every model copy."""
        flat = torch.cat([g.reshape(-1) for g in self.global_params] + [torch.tensor([float(self.outer_step)])])
        flat = self._broadcast_from_main(flat)
        if not self.is_main:
            sizes = [g.numel() for g in self.global_params]
            for global_param, values in zip(self.global_params, flat[:-1].split(sizes)):
                global_param.copy_(values.view_as(global_param))
            self.outer_step = int(flat[-1].item())
            self.last_hash = None  # rank 0 reports the hash
        self._reset_model_to_global()

    @torch.no_grad()
    def _reset_model_to_global(self) -> None:
        for param, global_param in zip(self.params, self.global_params):
            param.copy_(global_param.to(param.device, param.dtype))

    # --- joining / catching up ------------------------------------------------------------
    def _join_running_session(self) -> None:
        """A peer joining a session that already made progress downloads its state first."""
        deadline = time.monotonic() + min(10.0, 3 * self.diloco.progress_interval)
        while time.monotonic() < deadline:
            records = self._live_records()
            if self._others_finished(records, self.outer_step + 1):
                self._catch_up("joining a running session")
                return
            if records:
                return  # everyone is at the start: identical initial weights from the shared seed
            time.sleep(0.5)

    def _catch_up(self, why: str) -> OuterStepReport | None:
        """Replace the global state (and the model) with a peer's newer one."""
        print(f"diloco: {why}; downloading the global state from a peer", file=sys.stderr, flush=True)
        loaded = None
        try:
            loaded = self.averager.load_state_from_peers(timeout=self.diloco.averaging_timeout)
        except Exception as exc:
            log.warning("could not download the state from peers: %s", exc)
        if loaded is None:
            self._reset_model_to_global()
            return None
        metadata, tensors = loaded
        if int(metadata.get("outer_step", -1)) <= self.outer_step or self._unvouched(metadata, tensors):
            self._reset_model_to_global()
            return None
        self._load_state(int(metadata["outer_step"]), tensors)
        self._extra_bytes[1] += sum(t.numel() * t.element_size() for t in tensors)
        self._reset_model_to_global()
        self.ready_round = self.outer_step
        self.publisher.publish_now()
        return OuterStepReport(
            outer_step=self.outer_step, participants=self.participants(), params_hash=self.last_hash,
            extra={"state_downloaded": True},
        )

    def _unvouched(self, metadata: dict[str, Any], tensors: list[torch.Tensor]) -> bool:
        """Whether a downloaded state's parameters hash to something the live peers do not publish for its outer
        step (waiting a few seconds for their records of it: they publish right after applying a round)."""
        from cotrain.core.strategies.sanity import downloaded_state_problem

        step = int(metadata["outer_step"])
        state_hash = params_hash(tensors[: len(self.global_params)])
        deadline = time.monotonic() + VOUCH_WAIT
        while True:
            records = self._live_records()
            problem = downloaded_state_problem(state_hash, step, records,
                                               quorum_size(1 + len(records), self.diloco.min_peers))
            if problem is None:
                return False
            if time.monotonic() > deadline:
                print(f"diloco: the downloaded state of outer step {step} is refused: {problem}",
                      file=sys.stderr, flush=True)
                return True
            time.sleep(POLL_SECONDS)

    def _state_for_peers(self) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """(metadata, tensors) a joining peer downloads: global params then outer momentum."""
        with self._state_lock:
            tensors = [g.clone() for g in self.global_params] + [m.clone() for m in self._momentum()]
            metadata = {"outer_step": self.outer_step, "session_id": self.session_id}
        self._extra_bytes[0] += sum(t.numel() * t.element_size() for t in tensors)
        return metadata, tensors

    def _momentum(self) -> list[torch.Tensor]:
        return [
            self.outer_optimizer.state.get(g, {}).get("momentum_buffer", torch.zeros_like(g))
            for g in self.global_params
        ]

    @torch.no_grad()
    def _load_state(self, outer_step: int, tensors: list[torch.Tensor]) -> None:
        count = len(self.global_params)
        if len(tensors) != 2 * count or any(t.shape != g.shape for t, g in zip(tensors, self.global_params * 2)):
            raise RuntimeError(
                "the state downloaded from a peer does not match this model: every peer of a session must use "
                "the same [model] and [data] vocab settings"
            )
        with self._state_lock:
            for global_param, tensor in zip(self.global_params, tensors[:count]):
                global_param.copy_(tensor)
            for global_param, tensor in zip(self.global_params, tensors[count:]):
                self.outer_optimizer.state[global_param]["momentum_buffer"] = tensor.clone().float()
            self.outer_step = outer_step
            self.last_hash = params_hash(self.global_params)
            if self.is_main:
                self.averager.state_sharing_priority = float(self.outer_step)

    # --- peers and reporting -------------------------------------------------------------
    def _live_records(self):
        """Fresh progress records of the other peers of this session."""
        from cotrain.p2p.records import fetch_progress

        try:
            return [r for r in fetch_progress(self.dht, self.session_id)
                    if r.peer_id != self.peer_id and r.active and r.peer_id not in self.excluded]
        except Exception as exc:
            log.warning("could not read progress records: %s", exc)
            return []

    def _snapshot(self):
        from cotrain.p2p.progress import PeerProgress

        samples = self.step * self.config.train.batch_size
        return PeerProgress(
            peer_id=self.peer_id, session_id=self.session_id, step=self.step, outer_step=self.outer_step,
            tokens_per_second=float(self.tokens_per_second), samples=samples,
            tokens=samples * self.config.data.seq_length, wallet=getattr(self.diloco, "wallet", None),
            device=str(self.device), ready_round=self.ready_round, params_hash=self.last_hash,
            system=self.own_node, round=self.last_round,
        )

    def _publish_leaving(self) -> None:
        """A last record marked inactive, so the others stop waiting for this peer at once."""
        from dataclasses import replace

        from cotrain.p2p.dht import signer
        from cotrain.p2p.records import publish_progress

        try:
            final = replace(self._snapshot(), active=False)
            publish_progress(self.dht, signer(self.dht), final, ttl=self.publisher.ttl)
        except Exception as exc:
            log.warning("could not publish the leaving record: %s", exc)

    def participants(self) -> int:
        """This peer and every other peer with a fresh progress record (cached for a second)."""
        checked_at, count = self._participants_cache
        if self.is_main and time.monotonic() - checked_at > 1.0:
            records = self._live_records()
            self._note_peers(records)
            count = 1 + len(records)
            self._participants_cache = (time.monotonic(), count)
        return count

    def _note_peers(self, records) -> None:
        """Queue `peer` events for peers that appeared or disappeared since the last look."""
        current = {r.peer_id: r for r in records}
        for peer_id, record in current.items():
            if peer_id not in self._known_peers:
                self._peer_events.append({"peer_id": peer_id, "event": "joined", **_record_fields(record)})
        for peer_id, record in self._known_peers.items():
            if peer_id not in current:
                self._peer_events.append({"peer_id": peer_id, "event": "left", **_record_fields(record)})
        self._known_peers = current

    def peer_events(self) -> list[dict[str, Any]]:
        """`peer` events (joined / left, with the peer's last record) since the last call."""
        self.participants()
        events, self._peer_events = self._peer_events, []
        return events

    def gather_nodes(self, sample: dict[str, Any]) -> None:
        """This peer is one node: its processes' samples merged (over its local group when it has
        one), named by its short peer id; it goes into its record for the others to see."""
        if self.local is not None:
            self.local.gather_nodes(sample)
            nodes = self.local.system_nodes()
        else:
            nodes = merge_nodes([sample])
        if self.is_main:
            self.own_node = {**nodes[0], "node": short_peer_id(self.peer_id)}

    def system_nodes(self) -> list[dict[str, Any]]:
        """This peer's machine, then every other live peer's, from their records."""
        if self.own_node is None:
            return []
        self.participants()  # refreshes the others' records, at most once a second
        others = [{**r.system, "node": short_peer_id(r.peer_id)} for r in self._known_peers.values() if r.system]
        return [self.own_node, *others]

    def comm_bytes(self) -> tuple[int, int]:
        """Bytes this peer exchanged with other peers (its local DDP all-reduces are not counted)."""
        sent, received = self.averager.bytes_moved() if hasattr(self, "averager") else (0, 0)
        return sent + self._extra_bytes[0], received + self._extra_bytes[1]

    # --- checkpoints ---------------------------------------------------------------------
    def extra_state(self) -> dict[str, torch.Tensor]:
        with self._state_lock:
            state = {f"global.{i}": g.clone() for i, g in enumerate(self.global_params)}
            state.update({f"momentum.{i}": m.clone() for i, m in enumerate(self._momentum())})
            if self.error_feedback is not None:  # this peer's own: a peer resuming from its checkpoint sends it later
                state.update({f"error.{i}": e.clone() for i, e in enumerate(self.error_feedback)})
            state["outer_step"] = torch.tensor(self.outer_step)
            state["inner_done"] = torch.tensor(self.inner_done)
        return state

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if "outer_step" not in state:
            return
        saved_step = int(state["outer_step"])
        if saved_step < self.outer_step:
            return  # the state downloaded from peers is newer than this checkpoint
        count = len(self.global_params)
        tensors = [state[f"global.{i}"] for i in range(count)] + [state[f"momentum.{i}"] for i in range(count)]
        self._load_state(saved_step, tensors)
        self.inner_done = int(state.get("inner_done", torch.tensor(0)))
        if self.error_feedback is not None and f"error.{count - 1}" in state:
            self.error_feedback = [state[f"error.{i}"].to(torch.float32).clone() for i in range(count)]


def _record_fields(record) -> dict[str, Any]:
    """A progress record as `peer` event fields. The event already has peer_id and session_id,
    and its `step` is this peer's: the other peer's step becomes `peer_step`."""
    from dataclasses import asdict

    fields = asdict(record)
    for key in ("peer_id", "session_id"):
        fields.pop(key)
    fields["peer_step"] = fields.pop("step")
    return fields
