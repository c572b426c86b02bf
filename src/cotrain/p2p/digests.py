"""The digest a peer commits to for its update: sha256 of the exact fp32 bytes, so any change of one bit shows."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

__all__ = ["tensor_digest"]


def tensor_digest(tensors: torch.Tensor | Sequence[torch.Tensor]) -> str:
    """sha256 hex (64 digits) of the contiguous fp32 bytes of `tensors`, in order (shapes are not hashed:
    the averager's flat buffer and the list of its parts give the same digest).

    Only fp32: a conversion could map different tensors to the same bytes, so other dtypes raise TypeError.
    """
    digest = hashlib.sha256()
    for tensor in [tensors] if isinstance(tensors, torch.Tensor) else tensors:
        if tensor.dtype != torch.float32:
            raise TypeError(f"tensor_digest hashes fp32 tensors only, not {tensor.dtype}")
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).numpy().view("uint8").data)
    return digest.hexdigest()
