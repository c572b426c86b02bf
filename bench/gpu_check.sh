#!/usr/bin/env bash
# Issue 13's MFU check on one GPU: bench/mfu.py for Llama ~125M and ~1B (seq 2048, bf16,
# torch.compile, fused AdamW, SDPA), in under 6 minutes, on a fresh machine with no internet
# and no .venv. Run from the repository root:   OUT=/some/folder bash bench/gpu_check.sh
#
# It needs the machine's python3 with CUDA torch and transformers. The engine's config needs
# pydantic and tomli-w: when python3 lacks them they are installed from .whl/ (wheels for
# Python 3.12, carried along; nothing is downloaded). The engine is imported from src/ (mfu.py
# puts it on sys.path), so no `pip install -e .` (whose build backend would need the network).
# Writes $OUT/mfu.json (the figures, also after a partial run) and $OUT/gpu_check.log.
# MFU_ARGS replaces mfu.py's arguments (a CPU smoke test of this script: MFU_ARGS="--quick --device cpu").
set -x
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
rm -f bench/results/mfu.json
{
  timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 60 python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available())'
  if ! timeout 60 python3 -c 'import pydantic, tomli_w' && ls .whl/*.whl >/dev/null 2>&1; then
    timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/cotrain-site .whl/*.whl
    export PYTHONPATH="/tmp/cotrain-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  timeout 60 python3 -c 'import torch, transformers, pydantic, tomli_w
print("torch", torch.__version__, "transformers", transformers.__version__, "pydantic", pydantic.VERSION)'
  # 125M ~1.5 min, 1B ~2.5 min (mostly compile): 310 s for both, the 1B gets what 125M leaves
  timeout -k 10 325 python3 bench/mfu.py ${MFU_ARGS:---sizes 125M,1B --time-budget 310}
  echo "bench/mfu.py exit code: $?"
} 2>&1 | tee "$OUT/gpu_check.log"
cp bench/results/mfu.json "$OUT/" || echo "no bench/results/mfu.json was written"
