"""Tokenizers: a local `tokenizer.json` / Hugging Face directory, or a byte-level BPE trained on
the corpus with `tokenizers` and saved beside the prepared data. Nothing is fetched from a hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from cotrain.core.corpus import DataSourceError

EOS = "<|endoftext|>"
PAD = "<pad>"
MASK = "<mask>"
SPECIAL_TOKENS = [EOS, PAD, MASK]


def train_bpe(texts: Iterator[list[str]], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style: every byte is representable, no unknown token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, mask_token=MASK, unk_token=None
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a `tokenizer.json` file or a local Hugging Face directory."""
    path = Path(path).expanduser()
    if path.is_file():
        return _wrap(Tokenizer.from_file(str(path)))
    if path.is_dir():
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DataSourceError(f"cannot load a tokenizer from {path}: {exc}") from None
        if tok.eos_token is None and tok.sep_token is not None:
            tok.eos_token = tok.sep_token
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    raise DataSourceError(
        f"data.tokenizer {str(path)!r} is neither a tokenizer.json file nor a local tokenizer directory; "
        'use "train" to train one on the corpus'
    )


def eos_id(tok: PreTrainedTokenizerBase) -> int:
    for candidate in (tok.eos_token_id, tok.sep_token_id, tok.pad_token_id):
        if candidate is not None:
            return int(candidate)
    raise DataSourceError("the tokenizer has no end-of-text, separator or padding token to separate documents")


def mask_id(tok: PreTrainedTokenizerBase) -> int:
    if tok.mask_token_id is None:
        raise DataSourceError("bert needs a tokenizer with a mask token; use data.tokenizer = \"train\"")
    return int(tok.mask_token_id)
