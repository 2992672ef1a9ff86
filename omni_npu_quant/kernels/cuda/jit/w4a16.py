"""Triton W4A16 GEMM (imported lazily; needs ``triton``): ``out = x @ dequant(W).T (+ bias)``.

Operands (prepared once by ``kernels/cuda/w4a16.py``):

* ``qw`` int32 (K/8, N): int4 values stored as unsigned nibbles ``u = q + 8`` (0..15), 8 per int32
  along K, nibble j of row r = input channel 8r + j (GPTQ's qweight layout).
* ``scale`` fp32 (G, N), ``zp`` fp32 (G, N) or none: the dequantized weight is
  ``rnd_act((u - zp) * scale)`` with ``zp = weight_offset + 8`` (8 when symmetric).
* x (M, K) in bf16/fp16; the dot runs on the tensor cores in the activation dtype with fp32
  accumulation; bias (fp32) is added in fp32; one final cast to the activation dtype.

The pure-torch twin (``kernels.cuda.w4a16.twin_w4a16_gemm``) computes the same numbers with
``torch.matmul`` (only the fp32 summation order differs).  Configs come from a small table per M
bucket; ``OMNI_NPU_QUANT_CUDA_AUTOTUNE=1`` times them once per shape (shared ``ops._pick``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import ops as _ops
from .launch import fast as _fast

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
W4A16_TABLE = {
    16: [(16, 32, 128, 1, 4, 4), (16, 64, 128, 1, 4, 4), (16, 64, 64, 1, 4, 3), (16, 128, 128, 1, 4, 3),
         (16, 32, 256, 1, 4, 3), (16, 64, 256, 1, 4, 3)],
    64: [(32, 64, 128, 8, 4, 4), (64, 64, 64, 8, 4, 3), (64, 128, 64, 8, 4, 3)],
    256: [(64, 128, 64, 8, 4, 3), (128, 64, 64, 8, 4, 3), (128, 128, 64, 8, 8, 3)],
    1024: [(128, 128, 64, 8, 8, 3), (128, 256, 64, 8, 8, 3), (128, 128, 32, 8, 4, 4)],
    4096: [(128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 8, 3), (256, 128, 64, 8, 8, 3), (128, 128, 32, 8, 4, 4)],
}


@triton.jit
def w4a16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_qk, stride_sg,
                      stride_om, GROUP_K: tl.constexpr, HAS_ZP: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    gsz = tl.minimum(num_m - first_m, GROUP_M)
    pm = first_m + (pid % group) % gsz
    pn = (pid % group) // gsz
    offs_m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kw = tl.arange(0, BLOCK_K // 8)
    m_ok = offs_m < M
    n_ok = offs_n < N
    shifts = (tl.arange(0, 8) * 4)[None, :, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        kw = k0 // 8 + offs_kw  # each packed word is loaded once and unpacked in registers
        words = tl.load(qw_ptr + kw[:, None] * stride_qk + offs_n[None, :],
                        mask=(kw < K // 8)[:, None] & n_ok[None, :], other=0)
        u = tl.reshape((words[:, None, :] >> shifts) & 0xF, (BLOCK_K, BLOCK_N)).to(tl.float32)  # row 8r + j
        g = k0 // GROUP_K  # BLOCK_K divides GROUP_K: one scale row per K block
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=n_ok, other=0.0)
        if HAS_ZP:
            z = tl.load(z_ptr + g * stride_sg + offs_n, mask=n_ok, other=8.0)
        else:
            z = tl.full((BLOCK_N,), 8.0, tl.float32)
        w = ((u - z[None, :]) * s[None, :]).to(x.dtype)
        acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


_W4A16 = _fast(w4a16_gemm_kernel)


def w4a16_gemm(x2: torch.Tensor, qw: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, group_k: int,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """x2 (M, K) bf16/fp16 contiguous; qw int32 (K/8, N); scale / zp fp32 (G, N); bias fp32 (N,) or None."""
    m, k = x2.shape
    n = qw.shape[1]
    out = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    if m == 0:
        return out
    mb = _ops.m_bucket(m)

    def run(cfg):
        bm, bn, bk, gm, nw, ns = cfg
        _W4A16((_ops.cdiv(m, bm) * _ops.cdiv(n, bn),), (
            x2, qw, scale, zp if zp is not None else scale, bias if bias is not None else scale, out, m, n, k,
            x2.stride(0), qw.stride(0), scale.stride(0), out.stride(0), group_k, zp is not None,
            bias is not None, bm, bn, bk, gm), _ops._opts(nw, ns))

    pk = ("w4a16", mb, n, k, group_k, zp is not None)
    cfg = _ops._TUNED.get(pk)
    if cfg is None:  # candidates built on the first call of a shape only
        cands = W4A16_TABLE[mb]
        if group_k < k:  # per group: a K block must not straddle two groups
            cands = [c[:2] + (min(c[2], group_k & -group_k),) + c[3:] for c in cands]
        cfg = _ops._pick(pk, cands, run)
    run(cfg)
    return out
