"""CotrainCore's training loop: `python -m cotrain.core.train --config run.toml [--set k=v]`.

Read top to bottom: resolve the device and strategy, prepare the data, build the model, resume
from the latest checkpoint, then loop over steps (forward/backward over micro batches, clip,
optimizer step, strategy sync), logging progress, evaluating, checkpointing, and finally
exporting the model. The only outputs are files: the event stream, checkpoints, the final model
(and the experiment trackers of [tracking], which follow the event stream: core/tracking.py).

Exit codes: 0 completed, 1 training error, 2 unusable config or data,
128+signal (143 SIGTERM, 130 SIGINT) when stopped after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cotrain.config import ConfigError, CotrainConfig, load_config
from cotrain.core import checkpoint as ckpt
from cotrain.core.batches import BatchSchedule, TokenSamples, mask_tokens
from cotrain.core.console import ConsoleReporter
from cotrain.core.corpus import DataSourceError
from cotrain.core.data import prepare_dataset
from cotrain.core.events import EventWriter
from cotrain.core.export import export_final_model
from cotrain.core.inner_step import StepMath, token_accuracy
from cotrain.core.llm import (
    ModelLoadError,
    build_model,
    compile_model,
    describe,
    enable_activation_checkpointing,
)
from cotrain.core.metrics import gpu_utilization, memory_bytes, peak_flops
from cotrain.core.optim import build_optimizer, lr_at
from cotrain.core.path_guard import check_config_paths
from cotrain.core.strategies import make_strategy
from cotrain.core.system_metrics import SystemSampler
from cotrain.core.tokenizer import eos_id, mask_id
from cotrain.core.tracking import Tracking
from cotrain.disk_space import DiskFullError
from cotrain.p2p.errors import PeerNetworkError
from cotrain.parent_death import signal_when_parent_dies
from cotrain.paths import Layout

if TYPE_CHECKING:
    from transformers import PreTrainedModel

USER_ERRORS = (ConfigError, DataSourceError, ModelLoadError, PeerNetworkError)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop finishes the current step, checkpoints and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


def resolve_device(config: CotrainConfig) -> torch.device:
    wanted = config.train.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError(['train.device = "cuda": no CUDA GPU is visible; use "auto" or "cpu"'])
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class Window:
    """Step timings accumulated between two progress events (eval and checkpoint excluded)."""

    seconds: float = 0.0
    tokens: int = 0
    samples: int = 0
    steps: int = 0

    def add(self, seconds: float, tokens: int, samples: int) -> None:
        self.seconds += seconds
        self.tokens += tokens
        self.samples += samples
        self.steps += 1


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    seconds: float
    correct: int = 0
    predicted: int = 0
    outer: Any = None


@dataclass
class Trainer:
    config: CotrainConfig
    layout: Layout
    stop: StopRequest
    report: Any = None  # callable(event) for the console, main process only
    events: EventWriter | None = None
    tracking: Tracking | None = None  # experiment trackers, main process only
    tokens_seen: int = 0
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self.session_id = cfg.session.id or "session"
        self.device = resolve_device(cfg)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.strategy = make_strategy(cfg, self.device)

    # --- setup -------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, strategy = self.config, self.strategy
        strategy.setup()
        if strategy.is_main:
            self.events = EventWriter(self.layout.session_logs(self.session_id), self.session_id)
        check_config_paths(cfg)  # a worker's run reads only inside this machine's data roots (path_guard)
        self.data = self._prepare_data()
        self.tokenizer = self.data.load_tokenizer()
        special = {"eos": eos_id(self.tokenizer), "bos": eos_id(self.tokenizer)}
        if self.tokenizer.pad_token_id is not None:
            special["pad"] = int(self.tokenizer.pad_token_id)
        model = build_model(
            cfg.model, vocab_size=self.data.vocab_size, seq_length=cfg.data.seq_length, special=special,
            seed=cfg.train.seed,
        )
        self.masked_lm = cfg.uses_masked_lm
        self.mask_id = mask_id(self.tokenizer) if self.masked_lm else -1
        self.vocab_size = model.config.vocab_size
        self.info = describe(model, cfg.data.seq_length)
        self.checkpoint_root = Path(cfg.checkpoint.output_path or self.layout.checkpoints) / self.session_id
        self.resume_from = self._find_resume_point()
        if self.resume_from is not None:
            ckpt.load_model_weights(self.resume_from.path, model)
        self.install_model(model)

        causal = not self.masked_lm
        self.train_samples = TokenSamples(self.data.shards("train"), cfg.data.seq_length, causal)
        self.val_samples = TokenSamples(self.data.shards("val"), cfg.data.seq_length, causal)
        index, count = strategy.data_shard()
        self.schedule = BatchSchedule(len(self.train_samples), cfg.train.batch_size, strategy.data_seed(), index, count)
        self.total_steps = self.schedule.plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
        strategy.use_data(self.train_samples, self.val_samples, self.batch_loss)
        per_process = cfg.train.batch_size // count
        self.micro_batch = cfg.train.micro_batch_size or per_process
        self.accumulation = per_process // self.micro_batch
        self.step_math = StepMath(
            samples=self.train_samples.get, inputs_and_targets=self._inputs_and_targets,
            forward_loss=self._forward_loss, lr_at=lambda step: lr_at(step, cfg.train, self.total_steps),
            accumulation=self.accumulation, micro_batch=self.micro_batch, grad_clip=cfg.train.grad_clip,
            device=self.device,
        )
        strategy.use_step_math(self.step_math, self.optimizer, self.scaler)
        self.start_step = 0
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self.peak_flops = peak_flops(self.device, cfg.model.precision) if strategy.is_main else 0.0
        self.system = SystemSampler.for_this_process()  # primed now: its first rates cover training, not setup

    def install_model(self, model: PreTrainedModel) -> None:
        """Put `model` (weights loaded) to train: the speed options, the device, the strategy's
        wrapper, then the optimizer. torch.compile comes last so it traces the wrapped model
        (DDP's bucketed all-reduce, FSDP's hooks) and compiles in place: parameter names,
        checkpoints and the exported model stay the same."""
        cfg = self.config
        if cfg.train.activation_checkpointing:
            enable_activation_checkpointing(model)
        # seen as an nn.Module: mypy cannot bind PreTrainedModel.to (a functools.wraps wrapper); same call
        module: torch.nn.Module = model
        self.model = self.strategy.wrap_model(module.to(self.device))
        if cfg.train.compile:
            compile_model(self.model)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.model.precision == "fp16")
        self.autocast_dtype = AUTOCAST_DTYPES.get(cfg.model.precision)
        # a causal LM would otherwise fill a KV cache in every training forward, for nothing
        self.forward_kwargs = {} if cfg.uses_masked_lm else {"use_cache": False}
        # compiled, the fp32 cast and log-softmax fuse into one pass over the logits (batch × seq ×
        # vocab: the largest tensor of a small model) instead of writing fp32 copies of them
        self.cross_entropy = torch.compile(token_cross_entropy) if cfg.train.compile else token_cross_entropy

    def _prepare_data(self):
        cfg = self.config
        if self.strategy.is_main:
            data = prepare_dataset(cfg.data, self.layout, model_path=cfg.model.path, seed=cfg.train.seed)
            self.strategy.barrier()
            return data
        self.strategy.barrier()  # the main process prepares; the others then find it ready
        return prepare_dataset(cfg.data, self.layout, model_path=cfg.model.path, seed=cfg.train.seed)

    def _find_resume_point(self) -> ckpt.Checkpoint | None:
        resume = self.config.checkpoint.resume
        if resume == "none":
            return None
        if resume == "latest":
            return ckpt.latest_checkpoint(self.checkpoint_root)
        try:
            return ckpt.load_checkpoint_dir(Path(resume))
        except FileNotFoundError as exc:
            raise ConfigError([f"checkpoint.resume = {resume!r}: {exc}"]) from None

    def _restore(self, point: ckpt.Checkpoint) -> None:
        state = point.trainer_state
        self.strategy.load_optimizer_state_dict(self.model, self.optimizer, ckpt.load_optimizer_state(point.path))
        self.strategy.load_extra_state(ckpt.load_strategy_state(point.path))
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng(point.path)
        self.start_step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))

    # --- one step ------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _inputs_and_targets(self, tokens: torch.Tensor, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.masked_lm:
            return tokens[:, :-1], tokens[:, 1:]
        seed = hash((self.config.train.seed, step, micro, self.strategy.rank)) & 0x7FFFFFFF
        gen = torch.Generator().manual_seed(seed)
        return mask_tokens(
            tokens, mask_id=self.mask_id, vocab_size=len(self.tokenizer), probability=self.config.data.mlm_probability,
            generator=gen, special_ids=(eos_id(self.tokenizer),),
        )

    def _forward_loss(self, model: torch.nn.Module, inputs: torch.Tensor,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits = model(input_ids=inputs, **self.forward_kwargs).logits
        return self.cross_entropy(logits, targets), logits

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward_loss(self.model, inputs, targets)

    def train_step(self, step: int, measure_accuracy: bool) -> StepResult:
        model, strategy = self.model, self.strategy
        start = time.perf_counter()
        chosen = strategy.round_batch_indices(step, self.schedule)
        indices = self.schedule.indices(step) if chosen is None else self.schedule.process_slice(chosen)
        done = self.step_math.run(model, self.optimizer, self.scaler, strategy, step, indices, measure_accuracy)
        outer = strategy.after_optimizer_step(step + 1, model)
        loss_value = (done.loss_sum / self.accumulation).item()  # also waits for the GPU: the step is done
        return StepResult(loss_value, float(done.grad_norm), time.perf_counter() - start, done.correct,
                          done.predicted, outer)

    # --- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def batch_loss(self, model: torch.nn.Module, tokens: torch.Tensor) -> float:
        """Mean token loss of `model` (the unwrapped model: no collective) on one batch of samples; the
        DiLoCo validator scores updates with it."""
        inputs, targets = self._inputs_and_targets(tokens, -1, 0)
        with self._autocast():
            logits = model(input_ids=inputs.to(self.device), **self.forward_kwargs).logits
        return float(self.cross_entropy(logits, targets.to(self.device)))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss, perplexity and token accuracy (masked tokens for bert) over the first
        `eval_batches × batch_size` samples of the val split: the same samples every time,
        whatever the number of processes (they split the samples and add up their sums)."""
        cfg = self.config
        n = min(len(self.val_samples), cfg.train.eval_batches * cfg.train.batch_size)
        index, count = self.strategy.data_shard()
        mine = torch.arange(n)[index::count]
        self.model.eval()
        loss_sum, tokens, correct = 0.0, 0, 0
        for start in range(0, len(mine), self.micro_batch):
            idx = mine[start : start + self.micro_batch]
            inputs, targets = self._inputs_and_targets(self.val_samples.get(idx), -1 - int(idx[0]), 0)
            targets = targets.to(self.device)
            loss, logits = self._loss(inputs.to(self.device), targets)
            c, p = token_accuracy(logits, targets)
            loss_sum, tokens, correct = loss_sum + loss.item() * p, tokens + p, correct + c
        self.model.train()
        totals = [self.strategy.mean_across_processes(float(v)) * count for v in (loss_sum, tokens, correct)]
        if totals[1] == 0:
            return {}
        val_loss = totals[0] / totals[1]
        return {
            "val_loss": val_loss,
            "val_perplexity": math.exp(min(val_loss, 50.0)),
            "val_accuracy": totals[2] / totals[1],
        }

    # --- checkpoints and events ----------------------------------------------------------
    def emit(self, type_: str, **fields: Any) -> None:
        if self.events is None:
            return
        event = self.events.emit(type_, **fields)
        if self.report is not None:
            self.report(event)
        if self.tracking is not None:
            self.tracking.on_event(event)

    def save(self, step: int) -> None:
        model_state = self.strategy.model_state_dict(self.model)  # every process: FSDP gathers
        optim_state = self.strategy.optimizer_state_dict(self.model, self.optimizer)
        extra = self.strategy.extra_state()
        if self.strategy.is_main:
            path = ckpt.save_checkpoint(
                self.checkpoint_root,
                step,
                model_state=model_state,
                optimizer_state=optim_state,
                strategy_state=extra,
                trainer_state={
                    "step": step,
                    "epoch": self.schedule.epoch_of(max(0, step - 1)),
                    "tokens_seen": self.tokens_seen,
                    "total_steps": self.total_steps,
                    "schedule": self.config.train.schedule,
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    "session_id": self.session_id,
                    "world_size": self.strategy.world_size,
                },
                keep=self.config.checkpoint.keep,
            )
            self.emit("checkpoint", step=step, path=str(path))
        self.strategy.barrier()

    def progress_event(self, step: int, result: StepResult, window: Window) -> None:
        cfg = self.config
        tps = window.tokens / window.seconds if window.seconds else 0.0
        metrics: dict[str, Any] = {
            "accuracy": result.correct / result.predicted if result.predicted else None,
            "learning_rate": lr_at(step - 1, cfg.train, self.total_steps),
            "batch_size": cfg.train.batch_size,
            "tokens_per_second": tps,
            "samples_per_second": window.samples / window.seconds if window.seconds else 0.0,
            "step_time": window.seconds / max(1, window.steps),
            "mfu": tps * self.info.flops_per_token / self.peak_flops if self.peak_flops else None,
            "memory_bytes": memory_bytes(self.device),
            "grad_norm": result.grad_norm,
        }
        util = gpu_utilization(self.device)
        if util is not None:
            metrics["gpu_utilization"] = util
        comm_sent, comm_received = self.strategy.comm_bytes()
        extra: dict[str, Any] = {}
        if result.outer is not None:
            outer = result.outer
            extra = {"outer_step": outer.outer_step, "params_hash": outer.params_hash, **outer.extra}
        nodes = self.strategy.system_nodes()
        if nodes:
            extra["system"] = {"nodes": nodes}
        self.emit(
            "progress",
            step=step,
            total_steps=self.total_steps,
            progress=round(100.0 * step / self.total_steps, 2),
            loss=result.loss,
            participants=self.strategy.participants(),
            epoch=self.schedule.epoch_of(step - 1),
            tokens_seen=self.tokens_seen,
            bytes_sent=comm_sent,
            bytes_received=comm_received,
            metrics=metrics,
            **extra,
        )

    def sample_system(self, window: Window) -> None:
        """Every process, at the log interval: its machine's figures and its own tokens/s, gathered
        per node to the main process for the next progress event's `system` block."""
        own_tokens = window.tokens / self.strategy.data_shard()[1]
        self.strategy.gather_nodes(self.system.sample(own_tokens / window.seconds if window.seconds else None))

    # --- the run -------------------------------------------------------------------------
    def start_tracking(self) -> None:
        """TensorBoard / MLflow / W&B of [tracking] follow the main process's events from here on."""
        if self.events is not None:
            self.tracking = Tracking.start(self.config, self.layout.root, resumed=self.resume_from is not None)

    def fit(self) -> int:
        cfg = self.config
        self.model.train()
        self.start_tracking()
        self.emit(
            "started",
            step=self.start_step,
            total_steps=self.total_steps,
            resumed_from=str(self.resume_from.path) if self.resume_from else None,
            num_parameters=self.info.num_parameters,
            world_size=self.strategy.world_size,
            device=str(self.device),
            peer_id=getattr(self.strategy, "peer_id", None),  # DiLoCo: this process's DHT peer
            config=cfg.model_dump(mode="json"),
        )
        # Setup leaves many long-lived objects (datasets, tokenizer, modules): move them out of the
        # collector's way so periodic collections during training stay cheap.
        gc.collect()
        gc.freeze()
        tokens_per_step = cfg.train.batch_size * cfg.data.seq_length
        window = Window()
        step = self.start_step
        last_saved = self.start_step
        stopping = False
        while step < self.total_steps:
            stopping = self.strategy.any_process(self.stop.requested)
            if stopping:
                break
            log_now = (step + 1) % cfg.train.log_interval == 0 or step + 1 == self.total_steps
            result = self.train_step(step, measure_accuracy=log_now)
            step += 1
            self.tokens_seen += tokens_per_step
            self.history.append(result.loss)
            window.add(result.seconds, tokens_per_step, cfg.train.batch_size)
            if not math.isfinite(result.loss):
                raise FloatingPointError(
                    f"loss became {result.loss} at step {step}; lower train.learning_rate or use precision bf16/fp32"
                )
            if log_now:
                self.sample_system(window)
            if log_now or result.outer is not None:
                self.progress_event(step, result, window)
                window = Window()
                for peer in self.strategy.peer_events():
                    self.emit("peer", step=step, **peer)
                for verdict in self.strategy.verdict_events():
                    self.emit("verdict", step=step, **verdict)
            if step % cfg.train.eval_interval == 0 and step < self.total_steps:
                self.emit("eval", step=step, **self.evaluate())
            if step % cfg.checkpoint.interval == 0 or step == self.total_steps:
                self.save(step)
                last_saved = step
        if stopping:
            if step != last_saved:
                self.save(step)
            signum = self.stop.signum or signal.SIGTERM  # another process of the run was signalled
            name = signal.Signals(signum).name
            self.emit(
                "failed", step=step, interrupted=True, signal=name,
                error=f"stopped by {name} at step {step}; checkpoint saved, run the same config again to resume",
            )
            return 128 + int(signum)
        return self.finish(step)

    def finish(self, step: int) -> int:
        final = self.evaluate()
        self.emit("eval", step=step, **final)
        out_dir = self.layout.final_models / self.session_id
        model = self.strategy.export_model(self.model)  # every process: FSDP gathers
        if model is not None:
            metrics = {
                **final,
                "step": step,
                "tokens_seen": self.tokens_seen,
                "num_parameters": self.info.num_parameters,
                "model_type": self.config.model.type,
                "model_size": self.config.model.size,
                "session_id": self.session_id,
            }
            export_final_model(model, self.tokenizer, out_dir, metrics)
        self.strategy.barrier()
        self.emit("completed", step=step, final_model_path=str(out_dir), tokens_seen=self.tokens_seen, **final)
        return 0


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy in fp32 over positions whose target is not -100."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def run(config: CotrainConfig, *, interactive: bool | None = None, keep_alive: list | None = None) -> int:
    """Train `config` to completion (or until stopped). Returns the process exit code.
    `keep_alive` receives the trainer, so the caller decides when it is freed (see `main`)."""
    layout = Layout.from_env().ensure()
    stop = StopRequest().install()
    trainer: Trainer | None = None
    try:
        trainer = Trainer(config, layout, stop)
        if keep_alive is not None:
            keep_alive.append(trainer)
        if trainer.strategy.is_main:
            trainer.report = ConsoleReporter(interactive)
        trainer.setup()
        return trainer.fit()
    except USER_ERRORS as exc:
        message = str(exc)
        if trainer is not None:
            trainer.emit("failed", step=getattr(trainer, "start_step", 0), error=message)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except DiskFullError as exc:  # one sentence, no traceback; exit 1: a retry after space is freed resumes
        # the event stream and the run's log may be on the full disk too: each says it where it still can
        if trainer is not None:
            with contextlib.suppress(OSError):
                trainer.emit("failed", step=getattr(trainer, "start_step", 0) + len(trainer.history), error=str(exc))
        with contextlib.suppress(OSError):
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        if trainer is not None:
            trainer.emit(
                "failed", step=getattr(trainer, "start_step", 0) + len(trainer.history),
                error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
            )
        traceback.print_exc()
        return 1
    finally:
        if trainer is not None:
            if isinstance(trainer.report, ConsoleReporter):
                trainer.report.close()
            if trainer.tracking is not None:
                trainer.tracking.close()
            trainer.strategy.shutdown()
            if trainer.events is not None:
                trainer.events.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cotrain.core.train", description="Run CotrainCore on a config.")
    parser.add_argument("--config", required=True, help="the TOML config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    if "LOCAL_RANK" in os.environ:
        # torchrun puts its ranks in sessions of their own, so killing its process group (the server's
        # cancel after the grace period, an OOM kill) would leave the ranks running: die with torchrun
        signal_when_parent_dies(signal.SIGKILL)
    elif "SLURM_STEP_ID" in os.environ:
        # in a Slurm step the task's shell is the parent (server/slurm/script.py): Slurm's linuxproc tracking
        # loses a process whose parent died, so it would outlive its job's SIGKILL
        signal_when_parent_dies(signal.SIGKILL)
    try:
        config = load_config(args.config, overrides=args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trainer: list[Trainer] = []
    code = run(config, keep_alive=trainer)
    if "LOCAL_RANK" in os.environ:  # a torchrun worker
        # Freeing DDP's reducer frees its gloo process group, whose destructor joins the gloo thread
        # while holding the GIL; if that thread is still releasing the last collective's tensors it
        # needs the GIL too, and the process hangs after training completed (seen 1 run in ~30).
        # Everything is written and closed by now: leave without freeing anything.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
