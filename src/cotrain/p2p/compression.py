"""`[distributed.diloco] compression` → how the averaged pseudo-gradient travels between peers.

`none`, `fp16` and `int8` are hivemind's codecs. `int4` and `topk` are CoTrain's:

- `int4`: 4-bit signed values (−7..7) in blocks of `INT4_BLOCK` values, each block with an fp16 scale
  (its largest magnitude): 0.516 bytes a value, 7.76× fewer than fp32.
- `topk`: for a pseudo-gradient that the DiLoCo strategy already made sparse (`top_k_update` below: in every
  chunk of `SPARSE_BLOCK` values the largest entries of pseudo-gradient plus error feedback, rounded to 4 bits):
  only its non-zero entries travel, each as 2 bytes (its 12-bit offset in a block of `SPARSE_BLOCK` values and
  its 4-bit value), plus a count and an fp16 scale per block. The reducer of hivemind's all-reduce decodes every
  peer's sparse part, averages them (the average is non-zero on the union of the peers' entries) and sends that
  average back with the same codec, so the sparse contributions of different peers combine as dense ones would.
  The codec's blocks are the strategy's chunks (parts are whole numbers of blocks, see
  `SparseTopk.estimate_compression_ratio`), so what a peer sends decodes to exactly what it computed and its
  error feedback holds everything it left out, the rounding included.

hivemind's protocol names a part's codec by a closed enum; CoTrain's codecs travel under `BLOCKWISE_8BIT`
(hivemind's blockwise 8-bit needs bitsandbytes, which CoTrain does not use) with a tag byte saying which one, and
the decoder registered for that enum checks every length and offset of what a peer sent before it trusts it.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch
from hivemind.compression import (
    CompressionBase,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    Uniform8BitQuantization,
    serialization,
)
from hivemind.proto import runtime_pb2

INT4_BLOCK = 128
SPARSE_BLOCK = 4096  # 12-bit offsets
SPARSE_PART_BLOCKS = 16  # blocks of a part of the sparse all-reduce
DEFAULT_PART_BYTES = 2**19  # hivemind's DEFAULT_PART_SIZE_BYTES
FP16_MAX = float(torch.finfo(torch.float16).max)
_TAG_INT4 = 4
_TAG_SPARSE = 5


class CorruptPart(ValueError):
    """A peer sent a part this codec cannot have produced."""


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


def _scales(blocks: torch.Tensor) -> torch.Tensor:
    """Each row's largest finite magnitude, as the fp16 value the codecs send (0 for an all-zero row)."""
    finite = torch.nan_to_num(blocks, nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)
    return finite.abs().amax(dim=1).clamp(max=FP16_MAX).to(torch.float16)


def _quantize(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Values (rows of blocks) → codes 1..15 (8 is zero) against their row's fp16 scale."""
    scale = scales.float().unsqueeze(1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = torch.nan_to_num(values, nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)
    return (torch.round(values / safe * 7).clamp(-7, 7) + 8).to(torch.uint8)


def _dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return (codes.float() - 8) * (scales.float().unsqueeze(-1) / 7)


def _shape_of(serialized: runtime_pb2.Tensor) -> tuple[int, ...]:
    shape = tuple(int(s) for s in serialized.size)
    if any(s < 0 for s in shape):
        raise CorruptPart(f"negative dimension in {shape}")
    return shape


class CotrainCodec(CompressionBase):
    compression_type = runtime_pb2.CompressionType.BLOCKWISE_8BIT
    tag: int

    def _message(self, tensor: torch.Tensor, payload: bytes) -> runtime_pb2.Tensor:
        return runtime_pb2.Tensor(
            compression=self.compression_type, buffer=bytes([self.tag]) + payload, size=tensor.shape,
            dtype="float32", requires_grad=False,
        )

    @abstractmethod
    def decode(self, payload: memoryview, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor of `shape` that `payload` (the buffer after its tag byte) holds; CorruptPart if none can."""

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        return TaggedDecoder().extract(serialized_tensor)


class Int4Blockwise(CotrainCodec):
    """4-bit values, blocks of INT4_BLOCK with an fp16 scale each."""

    tag = _TAG_INT4

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        flat = tensor.detach().reshape(-1).float()
        blocks = math.ceil(flat.numel() / INT4_BLOCK)
        padded = torch.nn.functional.pad(flat, (0, blocks * INT4_BLOCK - flat.numel())).view(blocks, INT4_BLOCK)
        scales = _scales(padded)
        codes = _quantize(padded, scales).reshape(-1)[: flat.numel()]
        if codes.numel() % 2:
            codes = torch.cat([codes, torch.tensor([8], dtype=torch.uint8)])
        packed = (codes[0::2] << 4) | codes[1::2]
        return self._message(tensor, scales.numpy().tobytes() + packed.numpy().tobytes())

    def decode(self, payload: memoryview, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        blocks = math.ceil(numel / INT4_BLOCK)
        expected = 2 * blocks + math.ceil(numel / 2)
        if len(payload) != expected:
            raise CorruptPart(f"an int4 part of {numel} values has {len(payload)} bytes, not {expected}")
        scales = torch.from_numpy(np.frombuffer(payload, dtype=np.float16, count=blocks).copy())
        packed = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8, offset=2 * blocks).copy())
        codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)
        codes = torch.nn.functional.pad(codes, (0, blocks * INT4_BLOCK - codes.numel()), value=8)
        return _dequantize(codes.view(blocks, INT4_BLOCK), scales).reshape(-1)[:numel].reshape(shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        """How hivemind sizes parts: like uncompressed ones (2**17 values at its default part size), so even a
        small model's buffer is shared out among the reducers of a group (the codec's own ratio is 0.129)."""
        return 1.0


class SparseTopk(CotrainCodec):
    """The non-zero entries of a (mostly zero) tensor: per block of SPARSE_BLOCK values a uint16 count and an
    fp16 scale, then each entry as a uint16 `offset << 4 | code` (offsets ascending within a block)."""

    tag = _TAG_SPARSE

    def __init__(self, expected_density: float = 0.02):
        self.expected_density = expected_density

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        flat = tensor.detach().reshape(-1).float()
        blocks = math.ceil(flat.numel() / SPARSE_BLOCK)
        padded = torch.nn.functional.pad(flat, (0, blocks * SPARSE_BLOCK - flat.numel())).view(blocks, SPARSE_BLOCK)
        scales = _scales(padded)
        codes = _quantize(padded, scales)
        keep = (padded != 0) & (codes != 8)  # an entry that rounds to zero need not travel
        counts = keep.sum(dim=1).to(torch.int32)
        block_index, offsets = keep.nonzero(as_tuple=True)
        entries = (offsets.to(torch.int32) << 4) | codes[block_index, offsets].to(torch.int32)
        header = counts.to(torch.int32).numpy().astype(np.uint16).tobytes()
        # a block of SPARSE_BLOCK entries all kept would overflow uint16 counts by one: never, 4096 < 65536
        return self._message(tensor, header + scales.numpy().tobytes() + entries.numpy().astype(np.uint16).tobytes())

    def decode(self, payload: memoryview, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        blocks = math.ceil(numel / SPARSE_BLOCK)
        if len(payload) < 4 * blocks:
            raise CorruptPart(f"a sparse part of {numel} values has {len(payload)} bytes, fewer than its header")
        counts = np.frombuffer(payload, dtype=np.uint16, count=blocks).astype(np.int64)
        if (counts > SPARSE_BLOCK).any() or len(payload) != 4 * blocks + 2 * int(counts.sum()):
            raise CorruptPart(f"a sparse part of {numel} values has entry counts that do not match its length")
        scales = torch.from_numpy(np.frombuffer(payload, dtype=np.float16, offset=2 * blocks, count=blocks).copy())
        entries = torch.from_numpy(np.frombuffer(payload, dtype=np.uint16, offset=4 * blocks).astype(np.int64))
        block_index = torch.repeat_interleave(torch.arange(blocks), torch.from_numpy(counts))
        offsets, codes = entries >> 4, entries & 0x0F
        positions = block_index * SPARSE_BLOCK + offsets
        if positions.numel() and (int(positions.max()) >= numel or _repeats(positions)):
            raise CorruptPart(f"a sparse part of {numel} values names an entry out of range or twice")
        out = torch.zeros(numel)
        out[positions] = (codes.float() - 8) * (scales.float()[block_index] / 7)
        return out.reshape(shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        """Not what the codec achieves (about `2 · density / 4`) but how hivemind cuts the flat buffer: into parts of
        `part_size_bytes / (4 · ratio)` values, with hivemind's default part size (2**19 bytes) parts of
        `SPARSE_PART_BLOCKS` whole blocks. So the codec's blocks are `top_k_update`'s chunks (any other part size
        still works; its rounding is then not all in the error feedback), and the parts are small enough to be
        shared out among the reducers of a group."""
        return DEFAULT_PART_BYTES / (4 * SPARSE_PART_BLOCKS * SPARSE_BLOCK)


def _repeats(positions: torch.Tensor) -> bool:
    """Whether sorted-within-block positions repeat or go backwards (a producer writes them ascending)."""
    return bool((positions[1:] <= positions[:-1]).any())


class TaggedDecoder(CompressionBase):
    """Decodes CoTrain's codecs by their tag byte; registered for the enum they travel under."""

    compression_type = runtime_pb2.CompressionType.BLOCKWISE_8BIT

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        """hivemind encodes with the registered codec only when told this enum: CoTrain's runners never do."""
        return Int4Blockwise().compress(tensor, info, allow_inplace)

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = memoryview(serialized_tensor.buffer)
        if not buffer:
            raise CorruptPart("an empty part")
        codec = {_TAG_INT4: Int4Blockwise, _TAG_SPARSE: SparseTopk}.get(buffer[0])
        if codec is None:
            raise CorruptPart(f"unknown codec tag {buffer[0]}")
        return codec().decode(buffer[1:], _shape_of(serialized_tensor))

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 1.0


# Messages name their compression by type; make UNIFORM_8BIT decode with the fixed class and BLOCKWISE_8BIT with
# CoTrain's codecs (in this process and in the averager processes forked from it).
serialization._BASE_COMPRESSION_TYPES["UNIFORM_8BIT"] = Uniform8Bit()
serialization._BASE_COMPRESSION_TYPES["BLOCKWISE_8BIT"] = TaggedDecoder()

COMPRESSIONS = ("none", "fp16", "int8", "int4", "topk")


def make_compression(name: str, topk_fraction: float = 0.02) -> CompressionBase:
    codecs: dict[str, CompressionBase] = {
        "none": NoCompression(), "fp16": Float16Compression(),
        "int8": Uniform8Bit(),  # no extra dependency (hivemind's blockwise 8-bit needs bitsandbytes)
        "int4": Int4Blockwise(), "topk": SparseTopk(topk_fraction),
    }
    try:
        return codecs[name]
    except KeyError:
        raise ValueError(f"distributed.diloco.compression = {name!r}: must be one of {sorted(codecs)}") from None


def sparsify_top_k(accumulated: torch.Tensor, fraction: float, chunk: int = SPARSE_BLOCK) -> torch.Tensor:
    """A mask of the entries to send of `accumulated`: in every chunk of `chunk` consecutive values, the
    `ceil(fraction · chunk)` of largest magnitude."""
    flat = accumulated.reshape(-1)
    chunks = math.ceil(flat.numel() / chunk)
    padded = torch.nn.functional.pad(flat.abs(), (0, chunks * chunk - flat.numel()), value=-1.0).view(chunks, chunk)
    k = max(1, min(chunk, math.ceil(fraction * chunk)))
    chosen = padded.topk(k, dim=1, sorted=False).indices
    mask = torch.zeros_like(padded, dtype=torch.bool).scatter_(1, chosen, True)
    return mask.reshape(-1)[: flat.numel()].reshape(accumulated.shape)


@torch.no_grad()
def top_k_update(accumulated: torch.Tensor, fraction: float) -> torch.Tensor:
    """What a peer sends of `accumulated` (its pseudo-gradient plus error feedback; a whole number of
    SPARSE_BLOCK chunks): the top-k entries of every chunk, rounded to the 4-bit values the codec sends, so
    `SparseTopk` carries it exactly. `accumulated − top_k_update(...)` is the peer's next error feedback."""
    if accumulated.numel() % SPARSE_BLOCK:
        raise ValueError(f"top-k works on whole chunks of {SPARSE_BLOCK} values, not on {accumulated.numel()}")
    chunks = accumulated.reshape(-1, SPARSE_BLOCK).float()
    selected = chunks * sparsify_top_k(chunks, fraction)
    scales = _scales(selected)
    return _dequantize(_quantize(selected, scales), scales).reshape(accumulated.shape)
