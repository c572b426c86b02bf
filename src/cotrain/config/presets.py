"""Model size presets: the architecture of every `[model] size` per family, as plain data.

Small presets (`debug`, `tiny`, `small`, `base`) size their vocabulary to the tokenizer; the
published shapes (`7B`, `13B`, `70B`, `8B`, bert `base`/`large`) keep their published
dimensions and vocabulary. Parameter counts are computed analytically so the UI and
`cotrain models list` can show a 70B model's size without allocating it; a test checks them
against `transformers` on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SMALL_VOCAB = 4096


@dataclass(frozen=True)
class ModelPreset:
    family: str
    size: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    num_kv_heads: int | None = None  # None: same as num_heads (no GQA)
    vocab_size: int | None = None  # None: taken from the tokenizer
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    published: bool = False  # the exact dimensions of a released model

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def vocab(self, tokenizer_vocab: int | None = None) -> int:
        return self.vocab_size or tokenizer_vocab or DEFAULT_SMALL_VOCAB

    def num_parameters(self, tokenizer_vocab: int | None = None) -> int:
        vocab = self.vocab(tokenizer_vocab)
        h, layers, inter = self.hidden_size, self.num_layers, self.intermediate_size
        if self.family == "bert":
            embeddings = (vocab + self.max_position_embeddings + 2) * h + 2 * h
            per_layer = 4 * (h * h + h) + 2 * h * inter + inter + h + 4 * h
            mlm_head = h * h + h + 2 * h + vocab  # transform + LayerNorm + decoder bias (tied weight)
            return embeddings + layers * per_layer + mlm_head
        kv_dim = self.kv_heads * (h // self.num_heads)
        per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * inter + 2 * h
        return 2 * vocab * h + layers * per_layer + h  # untied embedding + lm_head, final norm

    def num_embedding_parameters(self, tokenizer_vocab: int | None = None) -> int:
        """Parameters that cost no matmul FLOPs per token (the input embedding lookup)."""
        vocab = self.vocab(tokenizer_vocab)
        if self.family == "bert":
            return (vocab + self.max_position_embeddings + 2) * self.hidden_size
        return vocab * self.hidden_size


def _llama2(size: str, h: int, layers: int, heads: int, inter: int, ctx: int, **kw: object) -> ModelPreset:
    return ModelPreset("llama2", size, h, layers, heads, inter, ctx, **kw)  # type: ignore[arg-type]


def _llama3(size: str, h: int, layers: int, heads: int, inter: int, ctx: int, **kw: object) -> ModelPreset:
    kw.setdefault("rope_theta", 500000.0)
    return ModelPreset("llama3", size, h, layers, heads, inter, ctx, **kw)  # type: ignore[arg-type]


def _bert(size: str, h: int, layers: int, heads: int, inter: int, **kw: object) -> ModelPreset:
    return ModelPreset("bert", size, h, layers, heads, inter, 512, **kw)  # type: ignore[arg-type]


PRESETS: dict[str, dict[str, ModelPreset]] = {
    "llama2": {
        p.size: p
        for p in (
            _llama2("debug", 64, 2, 4, 172, 512),
            _llama2("tiny", 128, 4, 4, 344, 1024),
            _llama2("small", 512, 8, 8, 1376, 2048),
            _llama2("base", 1024, 16, 16, 2752, 4096),
            _llama2("7B", 4096, 32, 32, 11008, 4096, vocab_size=32000, published=True),
            _llama2("13B", 5120, 40, 40, 13824, 4096, vocab_size=32000, published=True),
            _llama2("70B", 8192, 80, 64, 28672, 4096, num_kv_heads=8, vocab_size=32000, published=True),
        )
    },
    "llama3": {
        p.size: p
        for p in (
            _llama3("debug", 64, 2, 4, 172, 512, num_kv_heads=2),
            _llama3("tiny", 128, 4, 4, 344, 1024, num_kv_heads=2),
            _llama3("small", 512, 8, 8, 1376, 2048, num_kv_heads=4),
            _llama3("base", 1024, 16, 16, 2752, 4096, num_kv_heads=8),
            _llama3("8B", 4096, 32, 32, 14336, 8192, num_kv_heads=8, vocab_size=128256, published=True),
            _llama3("70B", 8192, 80, 64, 28672, 8192, num_kv_heads=8, vocab_size=128256, published=True),
        )
    },
    "bert": {
        p.size: p
        for p in (
            _bert("debug", 64, 2, 2, 256),
            _bert("tiny", 128, 2, 2, 512),
            _bert("small", 512, 4, 8, 2048),
            _bert("base", 768, 12, 12, 3072, vocab_size=30522, published=True),
            _bert("large", 1024, 24, 16, 4096, vocab_size=30522, published=True),
        )
    },
}

MODEL_FAMILIES = tuple(PRESETS)


def sizes_of(family: str) -> tuple[str, ...]:
    return tuple(PRESETS.get(family, {}))


def get_preset(family: str, size: str) -> ModelPreset:
    try:
        return PRESETS[family][size]
    except KeyError:
        raise KeyError(
            f"no size {size!r} for model type {family!r}; choose one of: {', '.join(sizes_of(family))}"
        ) from None


def estimate_memory_per_gpu(
    preset: ModelPreset,
    *,
    precision: str,
    micro_batch_size: int,
    seq_length: int,
    shards: int = 1,
    tokenizer_vocab: int | None = None,
) -> int:
    """Rough bytes per GPU for mixed-precision AdamW training: fp32 weights, grads and two Adam
    moments (16 B/param, divided over FSDP shards) plus activations of one micro batch."""
    params = preset.num_parameters(tokenizer_vocab)
    state = 16 * params // max(1, shards)
    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    # ~ 34·h + 5·a·s bytes per token per layer (Korthikanti et al.), in units of act_bytes/2.
    per_token_layer = 34 * preset.hidden_size + 5 * preset.num_heads * seq_length
    activations = micro_batch_size * seq_length * preset.num_layers * per_token_layer * act_bytes // 2
    logits = micro_batch_size * seq_length * preset.vocab(tokenizer_vocab) * 4
    return state + activations + logits
