"""nunchaku SVDQuant W4A4 numerics (docs/svd.md section 1): INT4 per-64 groups, NVFP4 per-16 groups.

Activation quantizers, as ``src/kernels/zgemm/gemm_w4a4.cuh`` of nunchaku-tech/nunchaku describes them (read, not run):

* smoothing: ``x / smooth_factor`` in the activation dtype (``h2div``) -- a division, not a multiplication;
* INT4 (``quantize_w4a4_from_fpsum_warp``): per row and 64-group, ``s = amax * fp32(1/7)`` (fp32), stored rounded to
  the activation dtype; ``q = rint(x * (1/s))`` (fp32, the unrounded ``s``) clamped to the signed nibble [-8, 7];
* NVFP4 (``quantize_w4a4_fp4_from_fpsum_warp``): per 16-group ``s = min(amax * fp32(1/6), 448)``, stored as E4M3
  (round to nearest); elements ``x * (1/s)`` (unrounded ``s``) rounded to nearest-even E2M1, saturating at 6.
  An all-zero group has ``s = 0``: its elements are 0 (the kernel's ``0 * inf`` is not modelled).

GEMM (our reference; nunchaku sums the group partials in 16-bit, we accumulate in fp32): the operands scaled by their
group scales (exact in fp32), one fp32 GEMM over K (``group_matmul``); NVFP4 then multiplies by ``alpha`` (per tensor)
and ``wcscales`` (per output channel) in fp32.
"""
from __future__ import annotations

import torch

from .constants import E2M1
from .elements import quantize_elements

F32 = torch.float32
INT4_GROUP, NVFP4_GROUP = 64, 16
INT4_QMAX, NVFP4_QMAX, E4M3_MAX = 7.0, 6.0, 448.0

__all__ = ["INT4_GROUP", "NVFP4_GROUP", "smooth_divide", "int4_act_quant", "nvfp4_act_quant", "group_matmul",
           "int4_weight_quant", "nvfp4_weight_quant"]


def smooth_divide(x: torch.Tensor, smooth: torch.Tensor | None) -> torch.Tensor:
    """``x / smooth`` rounded to x's dtype (the smoothing nunchaku's quantizer applies)."""
    if smooth is None:
        return x
    return (x.to(F32) / smooth.to(x.dtype).to(F32)).to(x.dtype)


def _groups(x: torch.Tensor, g: int) -> torch.Tensor:
    m, k = x.shape
    if k % g:
        raise ValueError(f"K = {k} is not a multiple of the group size {g}")
    return x.to(F32).reshape(m, k // g, g)


def int4_act_quant(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed (M, K) activation -> (int8 values in [-8, 7] (M, K), scales (M, K/64) in xs's dtype)."""
    v = _groups(xs, INT4_GROUP)
    s = v.abs().amax(-1) * torch.tensor(1.0 / INT4_QMAX, dtype=F32)
    r = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    q = torch.round(v * r.unsqueeze(-1)).clamp_(-8, 7).to(torch.int8)
    return q.reshape(xs.shape), s.to(xs.dtype)


def nvfp4_act_quant(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed (M, K) activation -> (fp32 E2M1 values (M, K), E4M3 scales (M, K/16) as float8_e4m3fn)."""
    v = _groups(xs, NVFP4_GROUP)
    s = torch.clamp(v.abs().amax(-1) * torch.tensor(1.0 / NVFP4_QMAX, dtype=F32), max=E4M3_MAX)
    r = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    e = quantize_elements((v * r.unsqueeze(-1)).clamp_(-NVFP4_QMAX, NVFP4_QMAX), E2M1, "rint")
    return e.reshape(xs.shape), s.to(torch.float8_e4m3fn)


def group_matmul(a: torch.Tensor, sa: torch.Tensor, w: torch.Tensor, sw: torch.Tensor, group: int) -> torch.Tensor:
    """fp32 (M, N) = (a * sa) . (w * sw)^T with the group scales expanded along K: a (M, K), w (N, K) exact element
    values, sa (M, G), sw (N, G) scales.  The scaled operands are exact in fp32 (4-bit elements x 16-bit / E4M3
    scales) and so is each product for bf16 / E4M3 scales (fp16 INT4 scales: products rounded to fp32); the sum over K
    is one fp32 accumulation."""
    m, k = a.shape
    a_s = a.to(F32) * sa.to(F32).repeat_interleave(group, dim=1)[:, :k]
    w_s = w.to(F32) * sw.to(F32).repeat_interleave(group, dim=1)[:, :k]
    return a_s @ w_s.t()


def int4_weight_quant(w: torch.Tensor, scale_dtype: torch.dtype = torch.bfloat16
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Our online INT4 weight quantizer (symmetric, per 64-group, scale amax/7 in ``scale_dtype``):
    (int8 values (N, K), scales (N, K/64)).  nunchaku's own converter may choose scales differently."""
    v = _groups(w, INT4_GROUP)
    s = (v.abs().amax(-1) / INT4_QMAX).to(scale_dtype)
    s = torch.where(s.to(F32) > 0, s, torch.ones_like(s))
    q = torch.round(v / s.to(F32).unsqueeze(-1)).clamp_(-8, 7).to(torch.int8)
    return q.reshape(w.shape), s


def nvfp4_weight_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our online NVFP4 weight quantizer: (fp32 E2M1 values (N, K), E4M3 scales (N, K/16), fp32 alpha (1,)).
    ``alpha = amax(|w|) / (6 * 448)`` puts the largest group scale at the top of the E4M3 range."""
    v = _groups(w, NVFP4_GROUP)
    amax = float(v.abs().max()) if v.numel() else 0.0
    alpha = torch.tensor([amax / (NVFP4_QMAX * E4M3_MAX) if amax > 0 else 1.0], dtype=F32)
    s = (v.abs().amax(-1) / NVFP4_QMAX / alpha).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    sf = s.to(F32) * alpha
    r = torch.where(sf > 0, 1.0 / sf, torch.zeros_like(sf))
    e = quantize_elements((v * r.unsqueeze(-1)).clamp_(-NVFP4_QMAX, NVFP4_QMAX), E2M1, "rint")
    return e.reshape(w.shape), s, alpha
