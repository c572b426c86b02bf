"""The finished model, in Hugging Face format: `from_pretrained(models/final/<session>)` works."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cotrain.core.events import write_json_atomic
from cotrain.disk_space import DiskFullError, free_bytes, is_disk_full, size_text


def export_final_model(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: Path, metrics: dict[str, Any]
) -> Path:
    """Write model + tokenizer + metrics.json to a temp folder, then swap it into `out_dir`."""
    if not isinstance(model, PreTrainedModel):  # the strategies hand back the model build_model made
        raise TypeError(f"only a transformers model can be exported, not a {type(model).__name__}")
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / "metrics.json", metrics)
    except Exception as exc:  # a partial folder is removed; a model exported before stays as it was
        full = is_disk_full(exc, out_dir.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            free = free_bytes(out_dir.parent)
            raise DiskFullError(
                f"The disk is full: the final model could not be written to {out_dir} ({size_text(free)} free); "
                "the run's last checkpoint is kept, so free space and retry to export it", out_dir.parent, free,
            ) from exc
        raise
    old = out_dir.with_name(f".old-{out_dir.name}")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
