"""Preset parameter counts (used by the UI and `cotrain models list`) match transformers exactly."""

from __future__ import annotations

import pytest
import torch

from cotrain.config import PRESETS, ModelConfig
from cotrain.core.llm import build_hf_config


@pytest.mark.parametrize(
    "family,size", [(f, s) for f, presets in PRESETS.items() for s in presets], ids=lambda v: str(v)
)
def test_analytic_parameter_count_matches_transformers(family: str, size: str):
    from transformers import BertForMaskedLM, LlamaForCausalLM

    preset = PRESETS[family][size]
    hf_config = build_hf_config(ModelConfig(type=family, size=size), 512, 128, {"pad": 1, "eos": 0, "bos": 0})
    cls = BertForMaskedLM if family == "bert" else LlamaForCausalLM
    with torch.device("meta"):
        model = cls(hf_config)
    assert sum(p.numel() for p in model.parameters()) == preset.num_parameters(512)


def test_published_shapes():
    assert round(PRESETS["llama2"]["7B"].num_parameters() / 1e9, 2) == 6.74
    assert round(PRESETS["llama2"]["13B"].num_parameters() / 1e9, 2) == 13.02
    assert round(PRESETS["llama3"]["8B"].num_parameters() / 1e9, 2) == 8.03
    assert round(PRESETS["bert"]["base"].num_parameters() / 1e6, 1) == 109.5
