"""The finished model, in Hugging Face format: `from_pretrained(models/final/<session>)` works."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cotrain.core.events import write_json_atomic


def export_final_model(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: Path, metrics: dict[str, Any]
) -> Path:
    """Write model + tokenizer + metrics.json to a temp folder, then swap it into `out_dir`."""
    if not isinstance(model, PreTrainedModel):  # the strategies hand back the model build_model made
        raise TypeError(f"only a transformers model can be exported, not a {type(model).__name__}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    write_json_atomic(tmp / "metrics.json", metrics)
    old = out_dir.with_name(f".old-{out_dir.name}")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
