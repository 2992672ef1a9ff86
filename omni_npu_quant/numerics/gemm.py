"""Exact GEMM rules shared by the reference backend and the NPU emulator.

* MX: ``out = fp32(A @ B.T)`` with ``A = dec(x1) * 2**e1`` and ``B = dec(x2) * 2**e2`` decoded
  exactly to fp32 (every product is exact; only the fp32 summation order is free); bias added in
  fp32 (ops-nn ``matmul/quant_batch_matmul_v3/tests/assets/qbmmv3_kernel_golden.py`` compute_mx).
* Dual-level: per 512-block i, ``out += fp32(A_i @ B_i.T) * l0x[:, i] * l0w[i, :]`` (op-plugin
  ``test/test_custom_ops/test_npu_dual_level_quant_matmul.py``); the level-0 scales vary along K,
  so they cannot be applied after a full-K accumulation.
"""
from __future__ import annotations

import torch

from .constants import DUAL_L0_BLOCK

__all__ = ["mx_matmul", "dual_level_matmul"]


def _fp32_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return torch.matmul(a.to(torch.float32), b_t.to(torch.float32).transpose(-1, -2))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def mx_matmul(a_deq: torch.Tensor, b_deq: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a_deq (..., K), b_deq (N, K): exact MX operands in fp32 -> fp32 (..., N)."""
    out = _fp32_mm(a_deq, b_deq)
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out


def dual_level_matmul(a_l1: torch.Tensor, a_l0: torch.Tensor, b_l1: torch.Tensor, b_l0: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """a_l1 (..., K) / b_l1 (N, K): exact level-1 dequantized values (dec(q) * 2**e, fp32);
    a_l0 (..., nb512), b_l0 (N, nb512): fp32 level-0 scales.  Returns fp32 (..., N)."""
    k = a_l1.shape[-1]
    nb = -(-k // DUAL_L0_BLOCK)
    out = None
    for i in range(nb):
        sl = slice(i * DUAL_L0_BLOCK, min(k, (i + 1) * DUAL_L0_BLOCK))
        part = _fp32_mm(a_l1[..., sl], b_l1[:, sl])
        part = part * a_l0[..., i:i + 1].to(torch.float32) * b_l0[:, i].to(torch.float32)
        out = part if out is None else out + part
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out
