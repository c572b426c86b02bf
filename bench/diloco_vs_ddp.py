"""DiLoCo vs DDP on the same tiny model, tokens and number of workers.

    python bench/diloco_vs_ddp.py [--quick] [--workers 2] [--steps N]

DDP: `workers` processes under torchrun split a global batch of `batch` samples every step
(gradients all-reduced every step). DiLoCo: `workers` independent peers of `batch / workers`
samples each, averaging pseudo-gradients every H steps over hivemind on loopback. Both see the
same number of tokens, from a corpus large enough that no run repeats samples, and are scored on
the same val samples. Every run is the real engine (`python -m cotrain.core.train`); every row is
the mean over `--seeds` (each seed's loss is kept in the row).

Prints a table and writes bench/results/diloco_vs_ddp.json: one row per setting with strategy,
inner_steps, compression, workers, tokens, final_val_loss, bytes_sent_per_worker (and the
received bytes, the wall time, the loss gap to DDP, and for DiLoCo the rounds, how many were
retried and how many times a peer downloaded the state instead: each costs bytes beyond one
all-reduce per H steps). DDP's bytes are what a ring all-reduce of
the fp32 gradients moves per process (2(n-1)/n of the gradient bytes per step); DiLoCo's are the
serialized bytes each peer's averager actually sent.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a platform.py that would shadow the standard library's when run as a script
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import functools
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "diloco_vs_ddp.json"

BASE = """
[session]
id = "{session}"

[model]
type = "llama2"
size = "{size}"

[train]
batch_size = {batch}
max_steps = {steps}
learning_rate = {lr}
warmup_steps = 10
log_interval = {steps}
eval_interval = {steps}
eval_batches = {eval_batches}
seed = {seed}

[data]
dataset = "stdlib"
max_bytes = {max_bytes}
seq_length = 64
vocab_size = 512

[checkpoint]
interval = {steps}
keep = 1

[distributed]
strategy = "{strategy}"
nodes = 1
gpus_per_node = {gpus}
backend = "gloo"
"""

DILOCO = """
[distributed.diloco]
inner_steps = {inner_steps}
compression = "{compression}"
initial_peers = {initial_peers}
host_maddrs = ["/ip4/127.0.0.1/tcp/0"]
min_peers = {workers}
outer_lr = {outer_lr}
outer_momentum = {outer_momentum}
matchmaking_time = 2.0
averaging_timeout = 60.0
progress_interval = 1.0
"""

QUICK_GRID = [(20, "none"), (20, "int8"), (50, "none"), (50, "fp16")]
FULL_GRID = [(h, c) for h in (20, 50, 100) for c in ("none", "fp16", "int8")]


def engine_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COTRAIN_HOME=str(home), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def make_home(root: Path, name: str, datasets: Path) -> Path:
    home = root / name
    home.mkdir(parents=True)
    (home / "datasets").symlink_to(datasets, target_is_directory=True)
    return home


def read_events(home: Path, session: str) -> list[dict]:
    events = home / "logs" / "training" / session / "events.jsonl"
    return [json.loads(line) for line in events.read_text().splitlines()]


def last_events(home: Path, session: str) -> tuple[dict, dict]:
    """(last progress event, completed event) of a finished run."""
    events = read_events(home, session)
    progress = [e for e in events if e["type"] == "progress"]
    completed = [e for e in events if e["type"] == "completed"]
    if not completed:
        raise RuntimeError(f"run {session} in {home} did not complete; see its events.jsonl")
    return progress[-1], completed[-1]


@dataclass(frozen=True)
class Setup:
    """What every run of one benchmark shares: same model, tokens, workers and val samples."""

    root: Path
    datasets: Path
    workers: int
    batch: int  # global samples per optimizer step
    steps: int
    eval_samples: int
    max_bytes: int
    lr: float = 3e-3
    size: str = "debug"

    def config(self, session: str, seed: int, strategy: str) -> str:
        # DDP's processes split one batch; each DiLoCo peer trains on its own share of it
        batch = self.batch if strategy == "ddp" else self.batch // self.workers
        return BASE.format(session=session, batch=batch, steps=self.steps, strategy=strategy,
                           gpus=self.workers if strategy == "ddp" else 1, seed=seed,
                           eval_batches=self.eval_samples // batch, max_bytes=self.max_bytes, lr=self.lr,
                           size=self.size)


def run_ddp(setup: Setup, seed: int) -> dict:
    name = f"ddp-s{seed}"
    home = make_home(setup.root, name, setup.datasets)
    config = setup.root / f"{name}.toml"
    config.write_text(setup.config(name, seed, "ddp"))
    started = time.monotonic()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(setup.workers),
           "-m", "cotrain.core.train", "--config", str(config)]
    subprocess.run(cmd, env=engine_env(home), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress, completed = last_events(home, name)
    return row("ddp", None, "none", setup.workers, completed, progress, time.monotonic() - started)


def run_diloco(setup: Setup, seed: int, inner_steps: int, compression: str, initial_peers: list[str],
               outer_lr: float, outer_momentum: float) -> dict:
    name = f"diloco-h{inner_steps}-{compression}-lr{outer_lr}-m{outer_momentum}-s{seed}"
    procs, homes = [], []
    started = time.monotonic()
    for worker in range(setup.workers):
        home = make_home(setup.root, f"{name}-{worker}", setup.datasets)
        config = setup.root / f"{name}-{worker}.toml"
        config.write_text(
            setup.config(name, seed, "diloco")
            + DILOCO.format(inner_steps=inner_steps, compression=compression, initial_peers=json.dumps(initial_peers),
                            workers=setup.workers, outer_lr=outer_lr, outer_momentum=outer_momentum)
        )
        log = (setup.root / f"{name}-{worker}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", "cotrain.core.train", "--config", str(config)],
                                      env=engine_env(home), stdout=subprocess.DEVNULL, stderr=log))
        homes.append(home)
    codes = [p.wait() for p in procs]
    if any(codes):
        tails = "\n".join((setup.root / f"{name}-{w}.log").read_text()[-2000:] for w in range(setup.workers))
        raise RuntimeError(f"{name}: peers exited with {codes}:\n{tails}")
    finished = [last_events(home, name) for home in homes]
    hashes = {progress.get("params_hash") for progress, _ in finished}
    if len(hashes) != 1:
        raise RuntimeError(f"{name}: peers ended with different global params {hashes}")
    # rounds that needed another attempt and peers that downloaded the state instead: both move
    # bytes beyond one all-reduce per H steps, so the row says how often they happened
    outer_events = [e for home in homes for e in read_events(home, name) if e["type"] == "progress"]
    retried = sum(max(0, int(e.get("round_attempts") or 1) - 1) for e in outer_events)
    downloads = sum(1 for e in outer_events if e.get("state_downloaded"))
    sent = sum(p["bytes_sent"] for p, _ in finished) / setup.workers
    received = sum(p["bytes_received"] for p, _ in finished) / setup.workers
    progress, completed = finished[0]
    result = row("diloco", inner_steps, compression, setup.workers, completed, progress, time.monotonic() - started)
    result.update(bytes_sent_per_worker=int(sent), bytes_received_per_worker=int(received),
                  outer_lr=outer_lr, outer_momentum=outer_momentum, nesterov=outer_momentum > 0,
                  rounds=setup.steps // inner_steps, rounds_retried=retried, state_downloads=downloads)
    return result


def over_seeds(seeds: list[int], run_one) -> dict:
    """One row for a setting: the mean final val loss over `seeds` (each kept in val_loss_per_seed)."""
    runs = [run_one(seed=seed) for seed in seeds]
    merged = dict(runs[0])
    losses = [r["final_val_loss"] for r in runs]
    merged.update(final_val_loss=round(statistics.fmean(losses), 4), val_loss_per_seed=losses, seeds=seeds,
                  wall_seconds=round(sum(r["wall_seconds"] for r in runs), 1))
    for key in ("bytes_sent_per_worker", "bytes_received_per_worker"):
        merged[key] = round(statistics.fmean(r[key] for r in runs))
    for key in ("rounds", "rounds_retried", "state_downloads"):
        if key in merged:
            merged[key] = sum(r[key] for r in runs)
    return merged


def row(strategy: str, inner_steps: int | None, compression: str, workers: int, completed: dict, progress: dict,
        seconds: float) -> dict:
    return {
        "strategy": strategy,
        "inner_steps": inner_steps,
        "compression": compression,
        "workers": workers,
        "tokens": int(completed["tokens_seen"]) * (workers if strategy == "diloco" else 1),
        "final_val_loss": round(float(completed["val_loss"]), 4),
        "bytes_sent_per_worker": int(progress["bytes_sent"]),
        "bytes_received_per_worker": int(progress["bytes_received"]),
        "wall_seconds": round(seconds, 1),
    }


def prepare(setup: Setup) -> None:
    """Tokenize once, before any run."""
    from cotrain.config import load_config
    from cotrain.core.data import prepare_dataset
    from cotrain.paths import Layout

    home = make_home(setup.root, "prepare", setup.datasets)
    config = setup.root / "prepare.toml"
    config.write_text(setup.config("prepare", 0, "ddp"))
    cfg = load_config(config)
    prepare_dataset(cfg.data, Layout(home).ensure(), seed=cfg.train.seed)


def print_table(rows: list[dict]) -> None:
    ddp = next(r for r in rows if r["strategy"] == "ddp")
    header = f"{'strategy':8} {'outer lr/m':>10} {'H':>4} {'compr':>5} {'workers':>7} {'tokens':>9} " \
             f"{'val loss':>9} {'vs ddp':>7} {'MB sent/worker':>15} {'less bytes':>10} {'retried':>7} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        gap = (r["final_val_loss"] - ddp["final_val_loss"]) / ddp["final_val_loss"] * 100
        fewer = ddp["bytes_sent_per_worker"] / max(1, r["bytes_sent_per_worker"])
        r["val_loss_vs_ddp_percent"] = round(gap, 2)
        r["bytes_reduction_vs_ddp"] = round(fewer, 1)
        outer = f"{r['outer_lr']}/{r['outer_momentum']}" if r["strategy"] == "diloco" else "-"
        retried = f"{r['rounds_retried'] + r['state_downloads']}/{r['rounds']}" if r["strategy"] == "diloco" else "-"
        print(f"{r['strategy']:8} {outer:>10} {r['inner_steps'] or '-':>4} {r['compression']:>5} {r['workers']:>7} "
              f"{r['tokens']:>9} {r['final_val_loss']:>9.4f} {gap:>+6.2f}% {r['bytes_sent_per_worker'] / 1e6:>15.2f} "
              f"{fewer:>9.1f}x {retried:>7} {r['wall_seconds']:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced grid that runs in under 10 minutes on 2 cores")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch per step (DiLoCo: split over the peers)")
    parser.add_argument("--steps", type=int, default=1600,
                        help="optimizer steps (1600 x 16 x 64 tokens: about 10 per parameter of the debug model)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds; every row is the mean over them (default 1337 quick, 1337,7 full)")
    parser.add_argument("--size", default="debug", help="llama2 size preset of the model")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (DDP's, DiLoCo's inner)")
    parser.add_argument("--eval-samples", type=int, default=256, help="val samples every run is scored on")
    parser.add_argument("--max-bytes", type=int, default=4_000_000,
                        help="corpus bytes (enough that no run repeats samples: peers draw their own orders)")
    parser.add_argument("--outer", default=None,
                        help="outer Nesterov SGD settings lr:momentum,... "
                        "(default 0.7:0.7 quick, 0.7:0.7,0.7:0.9 full; "
                        "0.7:0.9 is the papers' default for long runs, 0.7:0.7 did best on runs this short, "
                        "1.0:0.0 is plain averaging of the peers' params)")
    parser.add_argument("--grid", default=None, help="runs as H:compression,... (default: the quick or full grid)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--workdir", default=None, help="where the runs' temporary homes go (default: $TMPDIR)")
    args = parser.parse_args(argv)
    steps = args.steps
    seeds = [int(s) for s in (args.seeds or ("1337" if args.quick else "1337,7")).split(",")]
    grid = QUICK_GRID if args.quick else FULL_GRID
    if args.grid:
        grid = [(int(h), c) for h, c in (item.split(":") for item in args.grid.split(","))]
    outer_spec = args.outer or ("0.7:0.7" if args.quick else "0.7:0.7,0.7:0.9")
    outer = [(float(lr), float(m)) for lr, m in (item.split(":") for item in outer_spec.split(","))]
    if any(steps % h for h, _ in grid):
        parser.error(f"--steps must be a multiple of every H in the grid {sorted({h for h, _ in grid})}")
    if args.batch % args.workers or args.eval_samples % args.batch:
        parser.error("--batch must be a multiple of --workers, and --eval-samples a multiple of --batch")

    from cotrain.p2p.dht import start_dht, visible_maddrs

    with tempfile.TemporaryDirectory(prefix="dilocobench-", dir=args.workdir) as tmp:
        setup = Setup(Path(tmp), Path(tmp) / "datasets", args.workers, args.batch, steps, args.eval_samples,
                      args.max_bytes, args.lr, args.size)
        setup.datasets.mkdir()
        prepare(setup)
        rows = [over_seeds(seeds, functools.partial(run_ddp, setup))]
        print(f"ddp: val loss {rows[0]['final_val_loss']} {rows[0]['val_loss_per_seed']}", file=sys.stderr)
        bootstrap = start_dht()
        try:
            peers = visible_maddrs(bootstrap)
            for outer_lr, outer_momentum in outer:
                for inner_steps, compression in grid:
                    rows.append(over_seeds(seeds, functools.partial(
                        run_diloco, setup, inner_steps=inner_steps, compression=compression, initial_peers=peers,
                        outer_lr=outer_lr, outer_momentum=outer_momentum)))
                    print(f"diloco H={inner_steps} {compression} outer {outer_lr}/{outer_momentum}: "
                          f"val loss {rows[-1]['final_val_loss']} {rows[-1]['val_loss_per_seed']}", file=sys.stderr)
        finally:
            bootstrap.shutdown()
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
