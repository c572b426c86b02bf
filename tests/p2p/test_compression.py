"""CoTrain's pseudo-gradient codecs (int4 blocks, sparse top-k): what they keep, what they cost in bytes, and that a
part a hostile peer made up is refused with a reason instead of decoded into garbage or a crash."""

from __future__ import annotations

import math

import pytest
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import runtime_pb2

from cotrain.p2p.compression import (
    INT4_BLOCK,
    SPARSE_BLOCK,
    CorruptPart,
    Int4Blockwise,
    SparseTopk,
    make_compression,
    sparsify_top_k,
    top_k_update,
)


def encode(codec, tensor: torch.Tensor) -> runtime_pb2.Tensor:
    return codec.compress(tensor, CompressionInfo.from_tensor(tensor))


def test_int4_keeps_each_value_within_half_a_step_of_its_block_and_costs_under_a_seventh():
    values = torch.randn(10_001, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.01, 10, 10_001)
    message = encode(Int4Blockwise(), values)
    decoded = deserialize_torch_tensor(message)  # through hivemind's registry, as a peer decodes it
    blocks = torch.nn.functional.pad(values, (0, -values.numel() % INT4_BLOCK)).view(-1, INT4_BLOCK)
    step = (blocks.abs().amax(dim=1) / 7).repeat_interleave(INT4_BLOCK)[: values.numel()]
    assert decoded.shape == values.shape
    assert ((decoded - values).abs() <= step / 2 * 1.01 + 1e-6).all()
    assert len(message.buffer) == 1 + 2 * math.ceil(10_001 / INT4_BLOCK) + math.ceil(10_001 / 2)
    assert values.numel() * 4 / len(message.buffer) >= 7.5
    assert torch.equal(deserialize_torch_tensor(encode(Int4Blockwise(), decoded)), decoded)  # a fixed point


def test_sparse_sends_only_the_non_zero_entries_two_bytes_each():
    generator = torch.Generator().manual_seed(2)
    values = torch.zeros(3 * SPARSE_BLOCK + 17)
    chosen = torch.randperm(values.numel(), generator=generator)[:250]
    values[chosen] = torch.randn(250, generator=generator)
    message = encode(SparseTopk(), values)
    decoded = deserialize_torch_tensor(message)
    blocks = math.ceil(values.numel() / SPARSE_BLOCK)
    kept = int((decoded != 0).sum())
    assert len(message.buffer) == 1 + 4 * blocks + 2 * kept
    assert set(decoded.nonzero().flatten().tolist()) <= set(chosen.tolist())
    block_max = torch.nn.functional.pad(values, (0, -values.numel() % SPARSE_BLOCK)).view(blocks, -1).abs().amax(1)
    step = (block_max / 7).repeat_interleave(SPARSE_BLOCK)[: values.numel()]
    assert kept == int((values.abs() >= step / 2).sum())  # entries under half a step round to zero: not sent
    assert ((decoded - values).abs() <= step / 2 * 1.01 + 1e-6).all()
    assert torch.equal(deserialize_torch_tensor(encode(SparseTopk(), torch.zeros(5))), torch.zeros(5))


def test_top_k_keeps_the_largest_entries_of_every_chunk():
    values = torch.randn(2 * SPARSE_BLOCK + 100, generator=torch.Generator().manual_seed(3))
    mask = sparsify_top_k(values, 0.02)
    k = math.ceil(0.02 * SPARSE_BLOCK)
    for start in (0, SPARSE_BLOCK):
        chunk, kept = values[start:start + SPARSE_BLOCK].abs(), mask[start:start + SPARSE_BLOCK]
        assert int(kept.sum()) == k
        assert chunk[kept].min() >= chunk[~kept].max()
    assert int(mask[2 * SPARSE_BLOCK:].sum()) == k  # a last, shorter chunk: k of its 100 values
    assert sparsify_top_k(values.view(2, -1), 0.02).shape == (2, values.numel() // 2)


def test_a_top_k_update_travels_exactly_and_its_error_feedback_keeps_the_rest():
    """What a peer computes to send is what the reducer decodes, so accumulated − sent (its next error feedback)
    holds all it left out: the entries it did not choose and the rounding of those it did."""
    accumulated = torch.randn(3 * SPARSE_BLOCK, generator=torch.Generator().manual_seed(4))
    sent = top_k_update(accumulated, 0.02)
    assert torch.equal(deserialize_torch_tensor(encode(SparseTopk(), sent)), sent)
    chosen = sparsify_top_k(accumulated, 0.02)
    assert set(sent.nonzero().flatten().tolist()) <= set(chosen.nonzero().flatten().tolist())
    error = accumulated - sent
    assert torch.equal(error[~chosen], accumulated[~chosen])
    assert (error[chosen].abs() < accumulated[chosen].abs()).float().mean() > 0.99
    with pytest.raises(ValueError, match="whole chunks"):
        top_k_update(torch.ones(100), 0.02)


@pytest.mark.parametrize("name", ["int4", "topk"])
def test_a_made_up_part_is_refused_with_a_reason(name: str):
    values = torch.zeros(2 * SPARSE_BLOCK)
    values[::97] = 1.0
    good = encode(make_compression(name), values)

    def forged(buffer: bytes, size: tuple[int, ...] = tuple(values.shape)) -> runtime_pb2.Tensor:
        return runtime_pb2.Tensor(compression=good.compression, buffer=buffer, size=size, dtype="float32")

    cases = [forged(good.buffer[:-1]), forged(good.buffer + b"\0\0"), forged(b""),
             forged(bytes([99]) + good.buffer[1:]), forged(good.buffer, (values.numel() * 2,))]
    if name == "topk":
        header = bytearray(good.buffer)
        header[1:3] = (5000).to_bytes(2, "little")  # a block claiming more entries than it has values
        cases.append(forged(bytes(header)))
        last = bytearray(good.buffer)
        last[-2:] = last[-4:-2]  # the last entry repeats the one before it
        cases.append(forged(bytes(last)))
        beyond = torch.zeros(SPARSE_BLOCK + 10)
        beyond[-1] = 1.0
        tail = encode(SparseTopk(), beyond)
        cases.append(forged(tail.buffer, (SPARSE_BLOCK + 5,)))  # its last entry lies past the tensor's end
    for message in cases:
        with pytest.raises(CorruptPart):
            deserialize_torch_tensor(message)


def test_unknown_compression_name_says_which_exist():
    with pytest.raises(ValueError, match="int4.*topk"):
        make_compression("int3")


def test_hivemind_codecs_still_decode_with_the_registry():
    values = torch.randn(1000)
    for name in ("none", "fp16", "int8"):
        codec = make_compression(name)
        decoded = deserialize_torch_tensor(serialize_torch_tensor(values, codec.compression_type))
        assert (decoded - values).abs().mean() < 0.05
