"""Engine overhead: tokens/s of `cotrain train` against a minimal hand-written PyTorch loop on
the same model, batch and data, measured in one run.

    python bench/engine_overhead.py [--quick] [--size tiny] [--rounds 2]

Both loops run as fresh processes with the same thread count, alternating (engine, baseline,
engine, baseline, ...) so drift in machine load hits both alike. The engine's figure is its own
`tokens_per_second` from the progress events (timed over the steps alone, so evaluation and
checkpoints are excluded); the baseline times its steps the same way. Warm-up steps are
dropped from both. Writes bench/results/engine_overhead.json.

It also prices the per-node system metrics (core/system_metrics.py: psutil, NVML, one gather
per log interval), in the same engine runs: after the warm-up window, the log windows alternate
between sampling at their end and not (`Trainer.sample_system` then does nothing), and the steps
and the sampling are timed in-process. `fraction_of_step_time` is the time spent sampling over the
time spent in steps (target under 1%); `step_time_ratio` is the step time, sampling included, of the
windows that sampled over that of those that did not (noisier: step times vary by a few %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "engine_overhead.json"
WARMUP_STEPS = 10


def config_text(size: str, steps: int, batch: int, seq: int) -> str:
    return f"""
[session]
id = "bench-engine"
[model]
type = "llama2"
size = "{size}"
[train]
batch_size = {batch}
max_steps = {steps}
learning_rate = 1e-3
log_interval = {WARMUP_STEPS}
eval_interval = {steps * 10}
[data]
dataset = "stdlib"
max_bytes = 2000000
seq_length = {seq}
vocab_size = 2048
[checkpoint]
interval = {steps * 10}
resume = "none"
"""


# The engine's own loop, its steps and its system sampling timed. After the first (warm-up) log
# window, the windows alternate between sampling at their end (on) and not sampling (off).
TIMED_ENGINE = r'''
import json, sys, time
from cotrain.config import load_config
from cotrain.core import train
out, config = sys.argv[1], sys.argv[2]
spent = {"on": [0.0, 0], "off": [0.0, 0], "sampling_seconds": 0.0, "samples": 0}
window = {"index": 0}
step, sample = train.Trainer.train_step, train.Trainer.sample_system
def sampling():
    return window["index"] % 2 == 1
def timed_step(self, *args, **kwargs):
    began = time.perf_counter()
    result = step(self, *args, **kwargs)
    if window["index"] > 0:
        bucket = spent["on" if sampling() else "off"]
        bucket[0] += time.perf_counter() - began
        bucket[1] += 1
    return result
def timed_sample(self, log_window):
    if window["index"] == 0 or sampling():
        began = time.perf_counter()
        sample(self, log_window)
        seconds = time.perf_counter() - began
        if window["index"] > 0:
            spent["on"][0] += seconds
            spent["sampling_seconds"] += seconds
            spent["samples"] += 1
    window["index"] += 1
train.Trainer.train_step, train.Trainer.sample_system = timed_step, timed_sample
code = train.run(load_config(config))
with open(out, "w") as fh:
    json.dump(spent, fh)
sys.exit(code)
'''


def engine_run(config: Path, home: Path) -> dict:
    """One engine run: its tokens/s (from its progress events) and its step and sampling times."""
    env = {**os.environ, "COTRAIN_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    events_file = home / "logs" / "training" / "bench-engine" / "events.jsonl"
    events_file.unlink(missing_ok=True)
    timings = home / "timings.json"
    subprocess.run([sys.executable, "-c", TIMED_ENGINE, str(timings), str(config)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = [json.loads(line) for line in events_file.read_text().splitlines()]
    windows = [e for e in progress if e["type"] == "progress" and e["step"] > WARMUP_STEPS]
    # Each window covers log_interval steps of equal tokens: the overall rate is the harmonic mean.
    return {"tokens_per_s": statistics.harmonic_mean([e["metrics"]["tokens_per_second"] for e in windows]),
            **json.loads(timings.read_text())}


def sampling_cost(runs: list[dict]) -> dict:
    """The system sampling's price: its own time over the steps' time, and the step time (sampling
    included) of the windows that sampled over that of the windows that did not, in the same runs."""
    on_seconds, on_steps = (sum(r["on"][i] for r in runs) for i in (0, 1))
    off_seconds, off_steps = (sum(r["off"][i] for r in runs) for i in (0, 1))
    sampling = sum(r["sampling_seconds"] for r in runs)
    return {
        "fraction_of_step_time": sampling / (on_seconds - sampling),
        "seconds_per_sample": sampling / max(sum(r["samples"] for r in runs), 1),
        "step_seconds_sampling_on": on_seconds / on_steps,
        "step_seconds_sampling_off": off_seconds / off_steps,
        "step_time_ratio": (on_seconds / on_steps) / (off_seconds / off_steps),
        "log_interval": WARMUP_STEPS,
        "target_fraction": 0.01,
    }


BASELINE = r'''
import sys, time, json, numpy as np, torch, torch.nn.functional as F
from transformers import LlamaForCausalLM
from cotrain.config import ModelConfig
from cotrain.core.llm import build_hf_config
shard, size = sys.argv[1], sys.argv[3]
vocab, steps, batch, seq, warmup = (int(a) for a in (sys.argv[2], *sys.argv[4:8]))
data = np.memmap(shard, dtype=np.uint16, mode="r", offset=256)
torch.manual_seed(0)
special_ids = {"eos": 0, "bos": 0, "pad": 1}
model = LlamaForCausalLM(build_hf_config(ModelConfig(type="llama2", size=size), vocab, seq, special_ids))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
timed, tokens = 0.0, 0
for step in range(steps):
    start = time.perf_counter()
    ix = torch.randint(len(data) - seq - 1, (batch,))
    chunk = torch.from_numpy(np.stack([data[i : i + seq + 1].astype(np.int64) for i in ix.tolist()]))
    x, y = chunk[:, :-1], chunk[:, 1:]
    logits = model(input_ids=x).logits
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()
    if step >= warmup:
        timed += time.perf_counter() - start
        tokens += batch * seq
print(json.dumps({"tokens_per_s": tokens / timed}))
'''


def baseline_tokens_per_s(shard: Path, vocab: int, size: str, steps: int, batch: int, seq: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", BASELINE, str(shard), str(vocab), size, str(steps), str(batch), str(seq),
         str(WARMUP_STEPS)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (about a minute on 2 cores)")
    parser.add_argument("--size", default="tiny", help="llama2 size preset (default tiny)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    steps = 60 if args.quick else 150
    rounds = args.rounds or (2 if args.quick else 3)

    with tempfile.TemporaryDirectory(prefix="cotrain-bench-") as tmp:
        home = Path(tmp)
        os.environ["COTRAIN_HOME"] = str(home)
        from cotrain.config import load_config
        from cotrain.core.data import prepare_dataset
        from cotrain.paths import Layout

        config = home / "bench.toml"
        config.write_text(config_text(args.size, steps, args.batch, args.seq))
        cfg = load_config(config)
        prepared = prepare_dataset(cfg.data, Layout.from_env().ensure(), seed=cfg.train.seed)
        shard = prepared.shards("train")[0]

        engine, baseline, runs = [], [], []
        for round_ in range(rounds):
            started = time.monotonic()
            runs.append(engine_run(config, home))
            engine.append(runs[-1]["tokens_per_s"])
            baseline.append(baseline_tokens_per_s(shard, prepared.vocab_size, args.size, steps, args.batch, args.seq))
            print(f"round {round_ + 1}/{rounds}: engine {engine[-1]:,.0f} tok/s, baseline {baseline[-1]:,.0f} tok/s, "
                  f"system sampling {sampling_cost(runs[-1:])['fraction_of_step_time']:.4%} of step time "
                  f"({time.monotonic() - started:.0f}s)", flush=True)

    result = {
        "engine_tokens_per_s": statistics.median(engine),
        "baseline_tokens_per_s": statistics.median(baseline),
        "ratio": statistics.median(engine) / statistics.median(baseline),
        "rounds": {"engine": engine, "baseline": baseline},
        "setup": {"model": f"llama2-{args.size}", "batch_size": args.batch, "seq_length": args.seq, "steps": steps,
                  "warmup_steps": WARMUP_STEPS, "threads": os.cpu_count(), "device": "cpu"},
        "target_ratio": 0.97,
        "system_sampling": sampling_cost(runs),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nengine   {result['engine_tokens_per_s']:>10,.0f} tokens/s\n"
          f"baseline {result['baseline_tokens_per_s']:>10,.0f} tokens/s\n"
          f"ratio    {result['ratio']:>10.3f}  (target >= 0.97)")
    cost = result["system_sampling"]
    print(f"system sampling: {cost['seconds_per_sample'] * 1e3:.2f} ms per sample every {WARMUP_STEPS} steps = "
          f"{cost['fraction_of_step_time']:.4%} of step time (target < 1%); step time on/off "
          f"{cost['step_time_ratio']:.3f} (same runs)\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
