"""Writing a config back to TOML (the server's generated configs, `cotrain config show`)."""

from __future__ import annotations

import tomli_w

from cotrain.config.schema import CotrainConfig


def config_to_toml(config: CotrainConfig, *, header: str | None = None, full: bool = False) -> str:
    """TOML for `config`. By default only the keys that were set are written, so a
    generated file reads like one a person wrote; `full=True` writes every key."""
    data = config.model_dump(mode="json", exclude_none=True, exclude_unset=not full)
    for section in ("session", "model", "train", "distributed", "data", "checkpoint"):
        data.setdefault(section, {})
    data = {k: v for k, v in data.items() if v or k in ("model", "train")}
    body = tomli_w.dumps(data)
    if header:
        body = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + "\n" + body
    return body
