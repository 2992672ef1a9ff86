"""int4 in int32 ("int4pack", 8 values per int32): the weight format of torch_npu's W4A16 ops.

Element i of each group of 8 consecutive values along the last axis sits in bits [4i, 4i + 4) of one
int32 as a two's-complement nibble, least significant nibble first (torch-npu wheel 2.14.0:
``torch_npu/_op_plugin_docs.py``, ``npu_convert_weight_to_int4pack``: "8 int4 per int32", output
(k, n/8); Ascend/op-plugin ``op_plugin/ops/opapi/ConvertWeightToINT4PackKernelNpuOpApi.cpp``:
``(v0 & 0xF) | (v1 & 0xF) << 4 | ... | (v7 & 0xF) << 28``).
"""
from __future__ import annotations

import torch

__all__ = ["INT4_MIN", "INT4_MAX", "INT4_PER_INT32", "pack_int4", "unpack_int4", "quantize_weight_int4",
           "dequantize_weight_int4"]

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


def quantize_weight_int4(w: torch.Tensor, group_size: int = 0, symmetric: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest int4 of an (N, K) float weight per output row (``group_size`` 0) or per
    contiguous K-group, in msModelSlim's convention ``w ~ (q - offset) * scale``.

    Symmetric: ``scale = amax / 7``, ``offset = 0``, ``q = clamp(round(w / scale), -8, 7)``.
    Asymmetric: ``scale = (max - min) / 15`` over a range that includes 0, unsigned zero point
    ``z = round(-min / scale)`` in [0, 15], ``q = clamp(round(w / scale) + z, 0, 15) - 8`` and
    ``offset = z - 8`` (so offsets are integers in [-8, 7]).  Returns int8 ``q`` (N, K) and fp32
    ``scale`` / ``offset`` (N, G).  All-zero groups get scale 1 (q = 0).
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_weight_int4 takes an (N, K) weight, got shape {list(w.shape)}")
    n, k = w.shape
    gs = k if group_size in (0, -1, None) else int(group_size)
    if gs <= 0 or k % gs:
        raise ValueError(f"quantize_weight_int4: group_size {group_size} must divide K={k} (0 = per channel)")
    wg = w.to(torch.float32).reshape(n, k // gs, gs)
    if symmetric:
        amax = wg.abs().amax(-1)
        scale = torch.where(amax > 0, amax / INT4_MAX, torch.ones_like(amax))
        q = torch.round(wg / scale.unsqueeze(-1)).clamp(INT4_MIN, INT4_MAX)
        offset = torch.zeros_like(scale)
    else:
        lo = wg.amin(-1).clamp(max=0)
        hi = wg.amax(-1).clamp(min=0)
        scale = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(hi))
        z = torch.round(-lo / scale).clamp(0, 15)
        q = (torch.round(wg / scale.unsqueeze(-1)) + z.unsqueeze(-1)).clamp(0, 15) - 8
        offset = z - 8
    return q.reshape(n, k).to(torch.int8), scale, offset


def dequantize_weight_int4(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 ``(q - offset) * scale`` for int values ``q`` (N, K) and per-row / per-K-group (N, G)
    scales and offsets (exact: ``q - offset`` is a small integer, one fp32 product per element)."""
    n, k = q.shape
    s = scale.to(torch.float32).reshape(n, -1)
    g = s.shape[1]
    if k % g:
        raise ValueError(f"dequantize_weight_int4: {g} scale groups do not divide K={k}")
    wq = q.to(torch.float32).reshape(n, g, k // g)
    if offset is not None:
        wq = wq - offset.to(torch.float32).reshape(n, g, 1)
    return (wq * s.unsqueeze(-1)).reshape(n, k)
