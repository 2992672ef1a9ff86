"""Triton kernels of the SVD low-rank branch with the epilogue add (imported lazily; needs ``triton``).

Two forms of fp32 ``res + round_act(x . L1^T) . L2^T`` (twin: ``schemes.svd_base.lowrank_branch`` plus the residual):

* ``lowrank_add(x, l1, l2, res)`` (the default of ``cuda.svd``, one launch): per (BLOCK_M, BLOCK_N) output tile the
  rank-r hidden is accumulated over K in fp32 from the 16-bit operands (exact products), rounded to the activation
  dtype, and multiplied by the L2 tile with fp32 accumulation onto the fp32 residual tile.  The hidden is recomputed
  per N tile: N / BLOCK_N times the hidden's work and L1 reads (H200, 2026-12-02, rank 32, 8192 x 8192: ~50 us at
  M = 1, ~1.6 ms at M = 4096; docs/svd.md section 3).
* ``lowrank_add_split(x, res, plan)`` (opt-in, ``svd_branch="split"``; two launches): step 1, ``_hidden_kernel``,
  computes the hidden once per call as fp32 partial sums over ``SPLIT`` slices of K (grid M tiles x rank tiles x
  SPLIT; SPLIT > 1 where the M and rank tiles alone would leave the GPU's SMs idle, e.g. M = 1), written to an fp32
  (SPLIT, M, R) buffer, no atomics; step 2, ``_up_add_kernel``, per (BLOCK_M, BLOCK_N) output tile sums the SPLIT
  partials in slice order (fp32), rounds the hidden to the activation dtype once and accumulates ``. L2^T`` in fp32
  onto the residual tile, read in its own dtype (a 16-bit residual needs no separate fp32 cast), writing fp32.  L2 is
  streamed once per N tile and L1 once per call.  Deterministic (fixed summation order, no atomics); CUDA-graph
  capturable (no host sync; the partial buffer is a per-call allocation).

Exactness of both against the twin: not bit-identical (the twin is a torch fp32 matmul with its own summation
order), within what tests/svd/_svd_cuda_cases.py allows: another fp32 accumulation order may flip the rounding of
the hidden to the activation dtype (``ulp_act(h) + K 2^-24 |x| . |L1|^T``), plus ``r 2^-24`` of the up-projection.
fp32 activations use IEEE fp32 dots (no TF32).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .launch import fast as _fast

F32 = torch.float32


@triton.jit
def _lowrank_add_kernel(x_ptr, l1_ptr, l2_ptr, res_ptr, out_ptr, M, N, K, R,
                        sxm, sl1r, sl2n, srm, som,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                        IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, BLOCK_R)
    h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w1 = tl.load(l1_ptr + rr[None, :] * sl1r + rk[:, None], mask=(rr[None, :] < R) & (rk[:, None] < K), other=0.0)
        if IEEE:
            h = tl.dot(x, w1, h, input_precision="ieee")
        else:
            h = tl.dot(x, w1, h)
    hq = h.to(x_ptr.dtype.element_ty)  # the hidden rounded to the activation dtype
    w2 = tl.load(l2_ptr + rn[None, :] * sl2n + rr[:, None], mask=(rn[None, :] < N) & (rr[:, None] < R), other=0.0)
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.load(res_ptr + rm[:, None] * srm + rn[None, :], mask=omask, other=0.0)
    if IEEE:
        acc = tl.dot(hq, w2, acc, input_precision="ieee")
    else:
        acc = tl.dot(hq, w2, acc)
    tl.store(out_ptr + rm[:, None] * som + rn[None, :], acc, mask=omask)


_LOWRANK = _fast(_lowrank_add_kernel)
_OPTS = () if os.environ.get("TRITON_INTERPRET") == "1" else (("num_warps", 4),)


def lowrank_add(x2: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """fp32 (M, N) = res + round_act(x2 . l1^T) . l2^T; x2 (M, K), l1 (R, K), l2 (N, R) in one dtype, res fp32."""
    m, k = x2.shape
    r, n = l1.shape[0], l2.shape[0]
    if l1.shape != (r, k) or l2.shape != (n, r) or res.shape != (m, n):
        raise ValueError(f"lowrank_add: shapes x {list(x2.shape)}, l1 {list(l1.shape)}, l2 {list(l2.shape)}, "
                         f"res {list(res.shape)} do not fit (M, K), (R, K), (N, R), (M, N)")
    if not (x2.dtype == l1.dtype == l2.dtype) or res.dtype != F32:
        raise ValueError(f"lowrank_add: x, l1, l2 must share one dtype and res be fp32, got {x2.dtype}, {l1.dtype}, "
                         f"{l2.dtype}, {res.dtype}")
    x2, l1, l2, res = x2.contiguous(), l1.contiguous(), l2.contiguous(), res.contiguous()
    out = torch.empty((m, n), dtype=F32, device=x2.device)
    if m == 0 or n == 0:
        return out
    block_r = max(16, triton.next_power_of_2(r))
    block_m = 16 if m <= 16 else 64
    block_n, block_k = 64, 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _LOWRANK(grid, (x2, l1, l2, res, out, m, n, k, r, x2.stride(0), l1.stride(0), l2.stride(0), res.stride(0),
                    out.stride(0), block_m, block_n, block_k, block_r, x2.dtype == F32), _OPTS)
    return out


# ------------------------------------------------------------------------------------------------------------
# opt-in split form: the hidden once per call (step 1), then the up-projection onto the residual (step 2)
# ------------------------------------------------------------------------------------------------------------
MAX_SPLIT = 32  # slices of K of step 1 (a power of two); step 2 sums them unrolled
# above M = 16 every step-2 program re-reads split x BLOCK_M x BLOCK_R partials (N / BLOCK_N times in all): fewer
MAX_SPLIT_LARGE_M = 8
SPLIT_BLOCK_K = 64
MAX_BLOCK_R = 64  # rank tile; a larger rank loops over rank tiles (the rounding is per element: same result)


@triton.jit
def _hidden_kernel(x_ptr, l1_ptr, part_ptr, M, K, R, K_PER, sxm, sl1r,
                   BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, IEEE: tl.constexpr):
    """part[s, m, r] = sum over k in slice s (K_PER wide, a multiple of BLOCK_K) of x[m, k] * l1[r, k], fp32."""
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_s = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    k_lo = pid_s * K_PER
    h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K_PER, BLOCK_K):
        rk = k_lo + k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w1 = tl.load(l1_ptr + rr[None, :] * sl1r + rk[:, None], mask=(rr[None, :] < R) & (rk[:, None] < K), other=0.0)
        if IEEE:
            h = tl.dot(x, w1, h, input_precision="ieee")
        else:
            h = tl.dot(x, w1, h)
    pmask = (rm[:, None] < M) & (rr[None, :] < R)
    tl.store(part_ptr + (pid_s * M + rm[:, None]) * R + rr[None, :], h, mask=pmask)


@triton.jit
def _up_add_kernel(part_ptr, l2_ptr, res_ptr, out_ptr, M, N, R, sl2n, srm, som,
                   SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                   IEEE: tl.constexpr):
    """out = res + round_act(sum_s part[s]) . l2^T, fp32; the partials summed in slice order."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.load(res_ptr + rm[:, None] * srm + rn[None, :], mask=omask, other=0.0).to(tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        hmask = (rm[:, None] < M) & (rr[None, :] < R)
        hp = part_ptr + rm[:, None] * R + rr[None, :]
        h = tl.load(hp, mask=hmask, other=0.0)
        for s in tl.static_range(1, SPLIT):
            h += tl.load(hp + s * M * R, mask=hmask, other=0.0)
        hq = h.to(l2_ptr.dtype.element_ty)  # the hidden rounded to the activation dtype, once
        w2 = tl.load(l2_ptr + rn[None, :] * sl2n + rr[:, None], mask=(rn[None, :] < N) & (rr[:, None] < R), other=0.0)
        if IEEE:
            acc = tl.dot(hq, w2, acc, input_precision="ieee")
        else:
            acc = tl.dot(hq, w2, acc)
    tl.store(out_ptr + rm[:, None] * som + rn[None, :], acc, mask=omask)


_HIDDEN = _fast(_hidden_kernel)
_UP_ADD = _fast(_up_add_kernel)
_INTERP = os.environ.get("TRITON_INTERPRET") == "1"
_RES_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _pow2_floor(v: int) -> int:
    return 1 << (max(1, v).bit_length() - 1)


class SplitPlan:
    """What ``lowrank_add_split`` needs of one layer, built once at prepare: the factors (validated), the rank
    tiling, the SM count the split is sized for, and a per-M cache of the launch configuration."""

    __slots__ = ("l1", "l2", "dtype", "n", "k", "r", "block_r", "r_tiles", "sms", "ieee", "_by_m")

    def __init__(self, l1: torch.Tensor, l2: torch.Tensor, *, sms: int | None = None, where: str = ""):
        loc = f"{where}: " if where else ""
        if l1.dim() != 2 or l2.dim() != 2 or l2.shape[1] != l1.shape[0]:
            raise ValueError(f"{loc}lowrank split plan: svd_lowrank_l1 {list(l1.shape)} and svd_lowrank_l2 "
                             f"{list(l2.shape)} do not fit (R, K) and (N, R)")
        if l1.dtype != l2.dtype or l1.dtype not in _RES_DTYPES:
            raise ValueError(f"{loc}lowrank split plan: svd_lowrank_l1 / svd_lowrank_l2 must share one float dtype "
                             f"(bf16 / fp16 / fp32), got {l1.dtype}, {l2.dtype}")
        if l1.device != l2.device:
            raise ValueError(f"{loc}lowrank split plan: factors on {l1.device} and {l2.device}")
        self.l1, self.l2 = l1.contiguous(), l2.contiguous()
        self.dtype = l1.dtype
        self.r, self.k = int(l1.shape[0]), int(l1.shape[1])
        self.n = int(l2.shape[0])
        if self.r == 0:
            raise ValueError(f"{loc}lowrank split plan: rank 0")
        self.block_r = min(MAX_BLOCK_R, max(16, triton.next_power_of_2(self.r)))
        self.r_tiles = triton.cdiv(self.r, self.block_r)
        if sms is None:
            sms = (torch.cuda.get_device_properties(l1.device).multi_processor_count if l1.device.type == "cuda"
                   else 132)  # the interpreter: an H200's count, so the CPU tests take the GPU's split choices
        if not isinstance(sms, int) or sms <= 0:
            raise ValueError(f"{loc}lowrank split plan: sms must be a positive integer, got {sms!r}")
        self.sms = sms
        self.ieee = self.dtype == F32
        self._by_m: dict = {}

    def config(self, m: int, split: int | None = None):
        """M -> (step-1 grid, K_PER, BLOCK_M1, split, step-2 grid, BLOCK_M2, BLOCK_N, opts1, opts2)."""
        key = (m, split)
        c = self._by_m.get(key)
        if c is not None:
            return c
        small = m <= 16
        bm1 = 16 if small else 64
        m_tiles1 = triton.cdiv(m, bm1)
        chunks = triton.cdiv(self.k, SPLIT_BLOCK_K)
        if split is None:  # enough step-1 programs for about two per SM, in K slices of whole BLOCK_K chunks
            want = (2 * self.sms) // max(1, m_tiles1 * self.r_tiles)
            split = min(MAX_SPLIT if small else MAX_SPLIT_LARGE_M, _pow2_floor(chunks), _pow2_floor(want))
        elif not (isinstance(split, int) and 1 <= split <= MAX_SPLIT and split & (split - 1) == 0):
            raise ValueError(f"lowrank_add_split: split must be a power of two in 1..{MAX_SPLIT}, got {split!r}")
        k_per = triton.cdiv(chunks, split) * SPLIT_BLOCK_K
        bm2, bn = (16, 64) if small else (64, 128)
        g1 = (m_tiles1, self.r_tiles, split)
        g2 = (triton.cdiv(m, bm2), triton.cdiv(self.n, bn))
        o1 = () if _INTERP else (("num_warps", 4),)
        # one stage: the rank loop is one or two iterations, and the default pipelining of its SPLIT unrolled
        # partial loads asked for more than the SM's 227 KiB of shared memory (H200, 2026-12-02: 272-336 KiB)
        o2 = () if _INTERP else (("num_warps", 4 if small else 8), ("num_stages", 1))
        c = self._by_m[key] = (g1, k_per, bm1, split, g2, bm2, bn, o1, o2)
        return c


def lowrank_add_split(x2: torch.Tensor, res: torch.Tensor, plan: SplitPlan, split: int | None = None) -> torch.Tensor:
    """fp32 (M, N) = res + round_act(x2 . l1^T) . l2^T with the hidden computed once (two launches).  ``res``: the
    residual (M, N) in fp32 or the 16-bit activation dtype; ``split``: force the number of K slices (tests)."""
    m = x2.shape[0]
    if x2.dim() != 2 or x2.shape[1] != plan.k or x2.dtype != plan.dtype:
        raise ValueError(f"lowrank_add_split: x {list(x2.shape)} {x2.dtype} does not fit (M, {plan.k}) {plan.dtype}")
    if res.shape != (m, plan.n) or res.dtype not in _RES_DTYPES:
        raise ValueError(f"lowrank_add_split: res {list(res.shape)} {res.dtype} does not fit ({m}, {plan.n}) "
                         f"fp32 / bf16 / fp16")
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    if res.stride(1) != 1:
        res = res.contiguous()
    out = torch.empty((m, plan.n), dtype=F32, device=x2.device)
    if m == 0:
        return out
    g1, k_per, bm1, s, g2, bm2, bn, o1, o2 = plan.config(m, split)
    part = torch.empty((s, m, plan.r), dtype=F32, device=x2.device)
    _HIDDEN(g1, (x2, plan.l1, part, m, plan.k, plan.r, k_per, x2.stride(0), plan.l1.stride(0),
                 bm1, SPLIT_BLOCK_K, plan.block_r, plan.ieee), o1)
    _UP_ADD(g2, (part, plan.l2, res, out, m, plan.n, plan.r, plan.l2.stride(0), res.stride(0), out.stride(0),
                 s, bm2, bn, plan.block_r, plan.ieee), o2)
    return out


def lowrank_add_split_from(x2: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, res: torch.Tensor,
                           split: int | None = None, sms: int | None = None) -> torch.Tensor:
    """``lowrank_add``'s signature on the split form (tests): a fresh plan per call."""
    return lowrank_add_split(x2, res, SplitPlan(l1, l2, sms=sms), split)
