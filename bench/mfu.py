"""MFU: tokens/s and model FLOPs utilisation of the engine's own training step on one device.

    python bench/mfu.py                          # GPU: Llama ~125M and ~1B, seq 2048, bf16
    python bench/mfu.py --quick --device cpu     # smoke test: the debug model on CPU
    python bench/mfu.py --sizes 1B --batch 8 --peak-tflops 989

Each size runs in a child process of its own (an out-of-memory error or a hang in one leaves
the others' figures; a child that runs out of memory halves its batch and tries again). A child
builds the model with the engine's builder (`cotrain.core.llm.build_model`, SDPA attention,
random init) and trains it with the engine's `Trainer`: `install_model` (torch.compile,
activation checkpointing when asked, the optimizer from `build_optimizer`: fused AdamW on CUDA)
and `train_step` (bf16 autocast, loss, backward, grad clip, optimizer step, the loss read back)
on synthetic random token batches, so no data set is needed. Warm-up steps (the compile) are
not timed; the timed steps are bracketed by torch.cuda.synchronize.

MFU = tokens/s x FLOPs per token / peak, with FLOPs per token = 6·N + 12·L·H·Q·T (N: the
parameters that take part in a matmul, i.e. all but the input embedding; L layers, H heads of Q
dimensions, sequence T: the attention scores of the PaLM paper's appendix B, also nanoGPT's),
the engine's own `describe()`. Peak: --peak-tflops, else COTRAIN_PEAK_FLOPS, else the GPU's
dense bf16 data-sheet figure (989 TFLOP/s for H100 / H200 SXM), else a measured matmul rate
(CPUs, unknown GPUs). Writes bench/results/mfu.json (after every size) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/platform.py would shadow the standard library's `platform` (torch imports it); and this
# checkout's engine is the one measured, installed or not
sys.path[:] = [str(HERE.parent / "src")] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

RESULTS = HERE / "results" / "mfu.json"
TARGETS = {"125M": 0.40, "1B": 0.45}  # issue 13's MFU targets on an H100 / H200


def shapes() -> dict:
    from cotrain.config.presets import PRESETS, ModelPreset

    # Llama 2 style (no GQA, untied embeddings, 32k vocabulary), heads of 128 dimensions: the
    # flash kernels' fastest head size on Hopper.
    return {
        "125M": ModelPreset("llama2", "125M", 768, 12, 6, 2048, 4096, vocab_size=32000),
        "1B": ModelPreset("llama2", "1B", 2048, 18, 16, 5504, 4096, vocab_size=32000),
        "debug": PRESETS["llama2"]["debug"],  # --quick: vocabulary from --vocab
    }


# (micro) batch per size, one optimizer step each; 1B at seq 2048 and batch 16 takes ~70 GB
DEFAULT_BATCH = {"125M": 32, "1B": 16, "debug": 4}


class SyntheticSamples:
    """Random token ids in place of the engine's TokenSamples: `get(indices)` gives (n, seq + 1)
    int64 rows on the CPU, as the real ones do."""

    def __init__(self, vocab: int, seq_length: int, count: int, seed: int = 0):
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (count, seq_length + 1), generator=gen)

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, indices):
        return self.tokens[indices]


class CyclingSchedule:
    """The engine's BatchSchedule interface over the synthetic samples: step s takes the next
    `batch` rows, wrapping around."""

    def __init__(self, batch: int, count: int):
        self.batch, self.count = batch, count

    def indices(self, step: int):
        import torch

        return (torch.arange(self.batch) + step * self.batch) % self.count

    def epoch_of(self, step: int) -> int:
        return 0


def measure(size: str, batch: int, args: argparse.Namespace) -> dict:
    """Train `size` for warm-up + timed steps with the engine's Trainer; the figures of one row."""
    import torch
    import transformers

    from cotrain.config import CotrainConfig, DataConfig, ModelConfig, TrainConfig
    from cotrain.core.llm import build_model, describe, is_compiled
    from cotrain.core.train import StopRequest, Trainer
    from cotrain.paths import Layout

    preset = shapes()[size]
    seq = args.seq
    steps = args.warmup + args.steps
    config = CotrainConfig(
        # size is only the config's label: the shape comes from `preset` below
        model=ModelConfig(type="llama2", size="debug", precision=args.precision),
        train=TrainConfig(
            batch_size=batch, max_steps=steps, learning_rate=3e-4, warmup_steps=0, device=args.device,
            compile=args.compile, activation_checkpointing=args.activation_checkpointing,
        ),
        data=DataConfig(seq_length=seq, vocab_size=args.vocab),
    )
    trainer = Trainer(config, Layout(Path(tempfile.gettempdir()) / "cotrain-mfu"), StopRequest())  # writes nothing
    device = trainer.device
    model = build_model(config.model, vocab_size=args.vocab, seq_length=seq, special={}, seed=0, preset=preset)
    info = describe(model, seq)
    attention = model.config._attn_implementation
    trainer.masked_lm = False
    trainer.install_model(model)
    del model
    samples = SyntheticSamples(preset.vocab(args.vocab), seq, count=batch * 8)
    trainer.train_samples = samples
    trainer.schedule = CyclingSchedule(batch, len(samples))
    trainer.total_steps = steps
    trainer.micro_batch, trainer.accumulation = batch, 1
    trainer.model.train()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    losses = []
    for step in range(args.warmup):
        losses.append(trainer.train_step(step, measure_accuracy=False).loss)
    sync()
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times = []
    sync()
    timed_start = time.perf_counter()
    for step in range(args.warmup, steps):
        result = trainer.train_step(step, measure_accuracy=False)  # reads the loss back: waits for the GPU
        losses.append(result.loss)
        step_times.append(result.seconds)
    sync()
    timed_s = time.perf_counter() - timed_start

    tokens = batch * seq * args.steps
    tokens_per_s = tokens / timed_s
    peak, peak_source = peak_of(device, args)
    achieved = tokens_per_s * info.flops_per_token
    step_times.sort()
    return {
        "size": size,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({os.uname().machine}, {torch.get_num_threads()} threads)"),
        "parameters": info.num_parameters,
        "matmul_parameters": info.num_parameters - info.num_embedding_parameters,
        "layers": preset.num_layers,
        "hidden_size": preset.hidden_size,
        "heads": preset.num_heads,
        "intermediate_size": preset.intermediate_size,
        "vocab_size": preset.vocab(args.vocab),
        "seq_length": seq,
        "batch_size": batch,
        "tokens_per_step": batch * seq,
        "precision": args.precision,
        "compile": is_compiled(trainer.model),
        "activation_checkpointing": args.activation_checkpointing,
        "optimizer": (type(trainer.optimizer).__name__
                      + (" fused" if trainer.optimizer.defaults.get("fused") else " foreach")),
        "attention": attention,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "warmup_seconds": round(warmup_s, 2),
        "step_seconds_median": step_times[len(step_times) // 2],
        "tokens_per_second": tokens_per_s,
        "flops_per_token": info.flops_per_token,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        "mfu": achieved / peak,
        "target_mfu": TARGETS.get(size),
        "memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def peak_of(device, args: argparse.Namespace) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from)."""
    import torch

    from cotrain.core.metrics import GPU_PEAKS, peak_flops

    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    peak = peak_flops(device, args.precision)  # COTRAIN_PEAK_FLOPS, the data sheet, or a measured matmul
    if os.environ.get("COTRAIN_PEAK_FLOPS"):
        return peak, "COTRAIN_PEAK_FLOPS"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = [key for key in GPU_PEAKS if key in name]
        if known:
            return peak, f"{known[0]} data sheet"
    return peak, "measured matmul"


def run_child(args: argparse.Namespace) -> None:
    """One size in this process: the row, or the error, as JSON in --child-out."""
    import torch

    batch = args.batch or DEFAULT_BATCH[args.child]
    out = Path(args.child_out)
    while True:
        try:
            row = measure(args.child, batch, args)
            break
        except torch.OutOfMemoryError:
            if batch <= 1:
                raise
        # out of the except block: the failed attempt's frames (model, optimizer) are free now
        print(f"{args.child}: out of memory at batch {batch}; retrying at {batch // 2}", flush=True)
        batch //= 2
        gc.collect()
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    out.write_text(json.dumps(row))


def child_command(size: str, out: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", size, "--child-out", str(out),
           "--device", args.device, "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--precision", args.precision, "--vocab", str(args.vocab)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    if not args.compile:
        cmd.append("--no-compile")
    if args.activation_checkpointing:
        cmd.append("--activation-checkpointing")
    return cmd


def table(rows: list[dict]) -> str:
    head = (f"{'size':>6} {'params':>8} {'batch':>5} {'seq':>5} {'tokens/s':>12} {'step s':>7} "
            f"{'TFLOP/s':>8} {'peak':>6} {'MFU':>6} {'target':>6} {'mem GB':>6}  setup")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['size']:>6}  failed: {r['error']}")
            continue
        target = f"{r['target_mfu']:.0%}" if r.get("target_mfu") else "-"
        memory = f"{r['memory_gb']:.1f}" if r.get("memory_gb") is not None else "-"
        setup = f"{r['precision']}, {'compile' if r['compile'] else 'eager'}, {r['optimizer']}, {r['attention']}"
        lines.append(
            f"{r['size']:>6} {r['parameters'] / 1e6:>7.4g}M {r['batch_size']:>5} {r['seq_length']:>5} "
            f"{r['tokens_per_second']:>12,.0f} {r['step_seconds_median']:>7.3f} {r['achieved_tflops']:>8.3g} "
            f"{r['peak_tflops']:>6.3g} {r['mfu']:>6.1%} {target:>6} {memory:>6}  {setup}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the debug model, seq 128, 2 + 4 steps (a CPU smoke test, about a minute)")
    parser.add_argument("--sizes", default=None, help="comma-separated: 125M, 1B, debug (default 125M,1B)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when visible")
    parser.add_argument("--batch", type=int, default=None, help="micro batch (default per size: 125M 32, 1B 16)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 2048; --quick 128)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --quick 4)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 5; --quick 2)")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, TFLOP/s")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager mode")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary of the debug model (default 512)")
    parser.add_argument("--size-timeout", type=float, default=600, help="seconds per size before it is abandoned")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for all sizes together: a size gets what the ones before it left")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS.relative_to(HERE.parent)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.seq = args.seq or (128 if args.quick else 2048)
    args.steps = args.steps or (4 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    if args.child:
        run_child(args)
        return
    sizes = (args.sizes or ("debug" if args.quick else "125M,1B")).split(",")
    unknown = [s for s in sizes if s not in DEFAULT_BATCH]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {', '.join(DEFAULT_BATCH)}")

    result: dict = {"bench": "mfu", "quick": args.quick, "rows": []}
    deadline = time.monotonic() + args.time_budget if args.time_budget else float("inf")
    for size in sizes:
        timeout = min(args.size_timeout, deadline - time.monotonic())
        print(f"{size}: measuring (at most {timeout:.0f} s) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="cotrain-mfu-") as tmp:
            out = Path(tmp) / "row.json"
            try:
                proc = subprocess.run(child_command(size, out, args), timeout=max(timeout, 1))
                row = json.loads(out.read_text()) if proc.returncode == 0 and out.exists() else {
                    "size": size, "error": f"exit code {proc.returncode} (see the output above)"}
            except subprocess.TimeoutExpired:
                row = {"size": size, "error": f"no result within {timeout:.0f} s (--size-timeout / --time-budget)"}
        result["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result["rows"]))
    print(f"\nwrote {args.out}")
    missed = [r["size"] for r in result["rows"] if "error" in r]
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
