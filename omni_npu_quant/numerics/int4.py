"""int4 in int32 ("int4pack", 8 values per int32): the weight format of torch_npu's W4A16 ops.

Element i of each group of 8 consecutive values along the last axis sits in bits [4i, 4i + 4) of one
int32 as a two's-complement nibble, least significant nibble first (torch-npu wheel 2.14.0:
``torch_npu/_op_plugin_docs.py``, ``npu_convert_weight_to_int4pack``: "8 int4 per int32", output
(k, n/8); Ascend/op-plugin ``op_plugin/ops/opapi/ConvertWeightToINT4PackKernelNpuOpApi.cpp``:
``(v0 & 0xF) | (v1 & 0xF) << 4 | ... | (v7 & 0xF) << 28``).
"""
from __future__ import annotations

import torch

__all__ = ["INT4_MIN", "INT4_MAX", "INT4_PER_INT32", "pack_int4", "unpack_int4"]

INT4_MIN, INT4_MAX, INT4_PER_INT32 = -8, 7, 8
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int values in [-8, 7] (..., L), L % 8 == 0 -> int32 (..., L/8).  Raises ValueError otherwise."""
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise ValueError(f"pack_int4 takes an integer tensor, got {values.dtype}")
    if values.dim() < 1 or values.shape[-1] % INT4_PER_INT32:
        raise ValueError(f"pack_int4: last dim must be a multiple of 8, got shape {list(values.shape)}")
    v = values.to(torch.int64)
    if v.numel() and (int(v.min()) < INT4_MIN or int(v.max()) > INT4_MAX):
        raise ValueError(f"pack_int4: values must lie in [-8, 7], got [{int(v.min())}, {int(v.max())}]")
    nib = (v & 0xF).reshape(*v.shape[:-1], v.shape[-1] // INT4_PER_INT32, INT4_PER_INT32)
    word = (nib << _SHIFTS.to(v.device)).sum(-1)  # 0 .. 2^32 - 1
    return torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 (..., L/8) -> int32 values in [-8, 7] (..., L) (sign-extended nibbles, LSB first)."""
    if packed.dtype != torch.int32:
        raise ValueError(f"unpack_int4 takes int32, got {packed.dtype}")
    p = packed.to(torch.int64) & 0xFFFFFFFF
    nib = (p.unsqueeze(-1) >> _SHIFTS.to(p.device)) & 0xF
    vals = torch.where(nib >= 8, nib - 16, nib)
    return vals.reshape(*packed.shape[:-1], packed.shape[-1] * INT4_PER_INT32).to(torch.int32)
