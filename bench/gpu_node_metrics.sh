#!/usr/bin/env bash
# Issue 19's GPU check: the `system` block's GPU fields (NVML through nvidia-ml-py) on a real GPU,
# in about 2 minutes on a fresh machine with no internet and no .venv (see bench/gpu_check.sh for
# how its python3 gets pydantic and tomli-w from .whl/). Run from the repository root:
#     OUT=/some/folder bash bench/gpu_node_metrics.sh
# 1. the sampler alone, while a bf16 matmul loop keeps the GPU busy;
# 2. a short `python -m cotrain.core.train` session on the GPU: its last progress events.
# Writes $OUT/gpu_node_metrics.log, $OUT/gpu_sampler.json and $OUT/gpu_events.jsonl.
# The engine's data preparation needs `datasets`, which that machine's image lacks: prepare the
# corpus here first and carry it (GPU_HOME: a COTRAIN_HOME whose datasets/corpus holds .txt files,
# already prepared by a run of this same config; default: a fresh home on the stdlib corpus).
set -x
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=src
{
  timeout 20 nvidia-smi --query-gpu=name,utilization.gpu,memory.used,memory.total,power.draw,temperature.gpu --format=csv
  if ! timeout 60 python3 -c 'import pydantic, tomli_w' && ls .whl/*.whl >/dev/null 2>&1; then
    timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/cotrain-site .whl/*.whl
    export PYTHONPATH="src:/tmp/cotrain-site"
  fi
  OUT="$OUT" timeout 90 python3 - <<'EOF'
import json, os, threading, time
import torch
from cotrain.core.system_metrics import SystemSampler

stop = threading.Event()
def busy():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
worker = threading.Thread(target=busy, daemon=True)
worker.start()
sampler = SystemSampler("node-0", host_wide=True)
samples, costs = [], []
for _ in range(6):
    time.sleep(1.0)
    began = time.perf_counter()
    samples.append(sampler.sample(tokens_per_second=None))
    costs.append(time.perf_counter() - began)
stop.set()
worker.join()  # a CUDA thread still running at exit aborts the interpreter
print(json.dumps(samples[-1], indent=1))
print(f"sample cost with NVML: {1e3 * sorted(costs)[len(costs) // 2]:.2f} ms (median)")
with open(os.path.join(os.environ["OUT"], "gpu_sampler.json"), "w") as fh:
    json.dump({"samples": samples, "seconds_per_sample": costs}, fh, indent=1)
EOF
  home="${GPU_HOME:-$(mktemp -d)}"
  source='dataset = "stdlib"'
  [ -d "$home/datasets/corpus" ] && source="data_path = \"$home/datasets/corpus\""
  cat > "$home/gpu.toml" <<EOF
[session]
id = "gpu-nodes"
[model]
type = "llama2"
size = "tiny"
precision = "bf16"
[train]
device = "cuda"
batch_size = 32
max_steps = 300
log_interval = 25
eval_interval = 10000
compile = false
[data]
$source
max_bytes = 3000000
seq_length = 256
vocab_size = 2048
[checkpoint]
interval = 10000
resume = "none"
EOF
  COTRAIN_HOME="$home" timeout -k 10 200 python3 -m cotrain.core.train --config "$home/gpu.toml" >/dev/null
  echo "engine exit code: $?"
  grep '"type":"progress"' "$home/logs/training/gpu-nodes/events.jsonl" | tail -3 > "$OUT/gpu_events.jsonl"
  tail -1 "$OUT/gpu_events.jsonl"
} 2>&1 | tee "$OUT/gpu_node_metrics.log"
