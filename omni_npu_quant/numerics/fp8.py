"""FP8 E4M3FN codec (bias 7, max 448, min subnormal 2**-9, no Inf, NaN = x111_1111).

``encode_e4m3`` takes values already rounded by ``elements.quantize_elements`` (so exactly
representable) and stores them as ``torch.float8_e4m3fn``; it refuses anything else, so no
silent rounding or non-saturating cast can happen here (PyTorch eager casts do not saturate).
"""
from __future__ import annotations

import torch

__all__ = ["encode_e4m3", "decode_e4m3", "e4m3_from_bytes", "e4m3_to_bytes"]


def encode_e4m3(values: torch.Tensor) -> torch.Tensor:
    v = values.to(torch.float32)
    q = v.to(torch.float8_e4m3fn)
    back = q.to(torch.float32)
    if not bool(((back == v) | (torch.isnan(v) & torch.isnan(back))).all()):
        bad = v[back != v].flatten()[:4].tolist()
        raise ValueError(f"encode_e4m3: values not representable in FP8 E4M3FN: {bad}")
    return q


def decode_e4m3(q: torch.Tensor) -> torch.Tensor:
    if q.dtype == torch.uint8:
        q = e4m3_from_bytes(q)
    return q.to(torch.float32)


def e4m3_from_bytes(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float8_e4m3fn)


def e4m3_to_bytes(q: torch.Tensor) -> torch.Tensor:
    return q.contiguous().view(torch.uint8)
