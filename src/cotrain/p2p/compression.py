"""`[distributed.diloco] compression` → the hivemind compression of the averaged pseudo-gradient."""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import (
    CompressionBase,
    Float16Compression,
    NoCompression,
    Uniform8BitQuantization,
    serialization,
)
from hivemind.proto import runtime_pb2


class Uniform8Bit(Uniform8BitQuantization):
    """hivemind's 8-bit uniform quantization (256 buckets around the mean, ±6σ), with a decoder
    that works on numpy 2 (hivemind 1.1.12 converts a 1-element array with int(), now a TypeError)."""

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        codebook_size = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        indices = torch.as_tensor(quantized, dtype=torch.int64).reshape(tuple(serialized_tensor.size))
        values = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
        return values[indices].requires_grad_(serialized_tensor.requires_grad)


# Messages name their compression by type; make UNIFORM_8BIT decode with the fixed class
# (in this process and in the averager processes forked from it).
serialization._BASE_COMPRESSION_TYPES["UNIFORM_8BIT"] = Uniform8Bit()

COMPRESSIONS: dict[str, type[CompressionBase]] = {
    "none": NoCompression,
    "fp16": Float16Compression,
    "int8": Uniform8Bit,  # no extra dependency (hivemind's blockwise 8-bit needs bitsandbytes)
}


def make_compression(name: str) -> CompressionBase:
    try:
        return COMPRESSIONS[name]()
    except KeyError:
        raise ValueError(f"distributed.diloco.compression = {name!r}: must be one of {sorted(COMPRESSIONS)}") from None
