"""Building the model: a `transformers` Llama (llama2 / llama3, causal LM) or BERT (masked LM),
from random init at a size preset, or from a local pretrained directory; and the engine's speed
options on it: PyTorch's fused attention (SDPA), activation checkpointing, torch.compile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from cotrain.config import ModelConfig, get_preset
from cotrain.config.presets import ModelPreset

# torch.nn.functional.scaled_dot_product_attention: flash / memory-efficient kernels on GPU, and
# no (batch, heads, seq, seq) score matrix kept for the backward pass.
ATTENTION = "sdpa"


class ModelLoadError(ValueError):
    """The configured model cannot be built or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    num_parameters: int
    num_embedding_parameters: int
    num_layers: int
    hidden_size: int
    flops_per_token: float  # forward + backward, for MFU


def build_hf_config(
    model: ModelConfig, vocab_size: int, seq_length: int, special: dict[str, int], preset: ModelPreset | None = None
) -> BertConfig | LlamaConfig:
    """The `transformers` config of `model`'s size preset (or of `preset`, a shape of the caller's)."""
    preset = preset or get_preset(model.type, model.size)
    vocab = preset.vocab(vocab_size)
    if vocab < vocab_size:
        raise ModelLoadError(
            f"the tokenizer has {vocab_size} tokens but {model.type} {model.size} has a vocabulary of {vocab}; "
            "lower data.vocab_size or use a small preset (debug, tiny, small), which size their vocabulary to "
            "the tokenizer"
        )
    if model.type == "bert":
        dropout = 0.1 if model.dropout is None else model.dropout
        return BertConfig(
            vocab_size=vocab,
            hidden_size=preset.hidden_size,
            num_hidden_layers=preset.num_layers,
            num_attention_heads=preset.num_heads,
            intermediate_size=preset.intermediate_size,
            max_position_embeddings=max(preset.max_position_embeddings, seq_length),
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            pad_token_id=special.get("pad", 0),
        )
    # rope_theta and attn_implementation reach LlamaConfig through **kwargs in transformers 5 (its typed
    # signature lists neither) and are named parameters in 4.x: this spelling works in both
    return LlamaConfig(  # type: ignore[call-arg]
        vocab_size=vocab,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.kv_heads,
        max_position_embeddings=max(preset.max_position_embeddings, seq_length),
        rope_theta=preset.rope_theta,
        rms_norm_eps=preset.rms_norm_eps,
        attention_dropout=model.dropout or 0.0,
        tie_word_embeddings=False,
        bos_token_id=special.get("bos"),
        eos_token_id=special.get("eos"),
        pad_token_id=special.get("pad"),
        attn_implementation=ATTENTION,
    )


def build_model(
    model: ModelConfig, *, vocab_size: int, seq_length: int, special: dict[str, int], seed: int,
    preset: ModelPreset | None = None,
) -> PreTrainedModel:
    """Random init at the preset's size (seeded), or `from_pretrained` of `model.path`.
    `preset` replaces the size preset of `model.size` (the benchmarks' shapes)."""
    if model.path:
        return load_pretrained(model)
    hf_config = build_hf_config(model, vocab_size, seq_length, special, preset)
    torch.manual_seed(seed)
    if isinstance(hf_config, BertConfig):
        return BertForMaskedLM(hf_config)
    return LlamaForCausalLM(hf_config)


def load_pretrained(model: ModelConfig) -> PreTrainedModel:
    path = Path(model.path or "").expanduser()
    if not (path / "config.json").exists():
        raise ModelLoadError(f"model.path {str(path)!r} is not a Hugging Face model directory (no config.json)")
    hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    auto = AutoModelForMaskedLM if model.type == "bert" else AutoModelForCausalLM
    try:
        return auto.from_pretrained(str(path), config=hf_config, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from None


def describe(module: PreTrainedModel, seq_length: int) -> ModelInfo:
    """Parameter counts and training FLOPs per token: 6·N (matmul weights, forward+backward) plus
    the attention scores, 12·layers·hidden·seq (the PaLM appendix B estimate)."""
    cfg = module.config
    params = _numel(module)
    token_embedding = _numel(module.get_input_embeddings())
    embedding = token_embedding
    if getattr(cfg, "model_type", "") == "bert":
        embedding += _numel(module.get_submodule("bert.embeddings.position_embeddings"))
        embedding += _numel(module.get_submodule("bert.embeddings.token_type_embeddings"))
        # The MLM decoder shares the input embedding but does a matmul with it: count it back.
        matmul_params = params - embedding + token_embedding
    else:
        matmul_params = params - embedding
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    flops = 6.0 * matmul_params + 12.0 * layers * hidden * seq_length
    return ModelInfo(params, embedding, layers, hidden, flops)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def enable_activation_checkpointing(module: PreTrainedModel) -> None:
    """Keep only each transformer layer's input in the forward pass and recompute the rest in the
    backward pass. Non-reentrant checkpointing: it needs no input that requires grad, and
    torch.compile traces it."""
    kwargs = {"use_reentrant": False}
    enable = getattr(module, "activation_checkpointing_enable", None)  # transformers' newer name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def uses_activation_checkpointing(module: nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in module.modules())


def compile_model(module: nn.Module) -> nn.Module:
    """torch.compile `module` in place (`nn.Module.compile`): the module keeps its class, its
    parameter names and its state dict keys, so checkpoints, DDP / FSDP and the exported model are
    the same as without compile. Returns `module`."""
    module.compile()
    return module


def is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None
