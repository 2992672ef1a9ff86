"""Triton kernel of the SVD low-rank branch with the epilogue add (imported lazily; needs ``triton``).

``lowrank_add(x, l1, l2, res)`` -> fp32 ``res + round_act(x . L1^T) . L2^T``: per (BLOCK_M, BLOCK_N) output tile the
rank-r hidden is accumulated over K in fp32 from the 16-bit operands (exact products), rounded to the activation
dtype, and multiplied by the L2 tile with fp32 accumulation onto the fp32 residual tile.  The hidden is recomputed
per N tile (rank-r x K work per tile, small next to the residual GEMM for r << N).  fp32 activations use IEEE fp32
dots (no TF32).  Twin: ``schemes.svd_base.lowrank_branch`` (plus the residual).
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
