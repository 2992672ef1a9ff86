"""Dual-level MXFP4 (W4A4_MXFP4_DUALSCALE): fp32 level-0 scale per 512, E8M0 level-1 per 32.

Quantizing one row x (length K), as ``npu_dynamic_dual_level_mx_quant`` documents it
(ops-nn ``quant/dynamic_dual_level_mx_quant/README.md``; op-plugin 26.1.0 doc):

1. optional smoothing ``x = fp32(x) * fp32(smooth)`` (``smooth`` is the layer's ``mul_scale``,
   given in the activation dtype);
2. per 512-block ``l0 = fp32(amax / 6.0)``;
3. ``t = cast_to_input_dtype(fp32(x) / l0)`` (bf16/fp16 round to nearest even);
4. ``mx_quantize(t, E2M1, round_mode, scale_alg=0, block=32)``.

Dequantization: ``x ~= dec(q) * 2**e * l0``.  An all-zero 512-block is undocumented in CANN; we
define ``l0 = 0``, ``t = 0`` (codes 0, elements 0).  Non-finite inputs give a NaN ``l0`` and NaN
level-1 code (255) with zero elements for the whole 512-block.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .constants import DUAL_L0_BLOCK, DUAL_L1_BLOCK, E2M1
from .mx import block_view, mx_dequantize, mx_quantize, num_blocks

__all__ = ["DualResult", "dual_level_quantize", "dual_level_dequantize", "expand_l0"]


class DualResult(NamedTuple):
    values: torch.Tensor  # fp32 exact E2M1 values (..., K)
    l0: torch.Tensor  # fp32 (..., ceil(K/512))
    exponents: torch.Tensor  # int32 level-1 exponents (..., ceil(K/32)); 128 = NaN


def expand_l0(l0: torch.Tensor, k: int) -> torch.Tensor:
    """(..., nb512) -> (..., K) by repeating each level-0 scale over its block."""
    return l0.repeat_interleave(DUAL_L0_BLOCK, dim=-1)[..., :k]


def dual_level_quantize(x: torch.Tensor, smooth: torch.Tensor | None = None, round_mode: str = "rint",
                        *, work_dtype: torch.dtype | None = None) -> DualResult:
    """``work_dtype`` is the dtype ``t`` is rounded to (defaults to ``x.dtype``; fp32 keeps ``t``)."""
    work_dtype = work_dtype or x.dtype
    k = x.shape[-1]
    xf = x.to(torch.float32)
    if smooth is not None:
        if smooth.shape[-1] != k:
            raise ValueError(f"smooth scale has {smooth.shape[-1]} channels, input has {k}")
        xf = xf * smooth.to(torch.float32)
    b = block_view(xf, DUAL_L0_BLOCK)
    lo, hi = torch.aminmax(b, dim=-1)  # |max| without a full-size abs() copy; NaN propagates
    l0 = torch.maximum(lo.neg_(), hi).abs_().div_(6.0)  # abs_: max(-0.0, 0.0) may be -0.0
    t = b / l0.unsqueeze(-1)
    zero = l0 == 0
    if bool(zero.any()):
        t.masked_fill_(zero.unsqueeze(-1), 0.0)
    t = t.flatten(-2)[..., :k].to(work_dtype)
    r = mx_quantize(t, E2M1, round_mode, 0, block=DUAL_L1_BLOCK)
    assert r.exponents.shape[-1] == num_blocks(k, DUAL_L1_BLOCK)
    return DualResult(r.values, l0, r.exponents)


def dual_level_dequantize(values: torch.Tensor, l0: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    k = values.shape[-1]
    return mx_dequantize(values, exponents, block=DUAL_L1_BLOCK) * expand_l0(l0, k)
