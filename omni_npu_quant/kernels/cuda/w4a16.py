"""CUDA W4A16 kernel: Triton GEMM that unpacks int4 weights in registers (``jit/w4a16.py``).

Load: int4 values (N, K) -> unsigned nibbles ``q + 8`` packed 8 per int32 along K, (K/8, N) (GPTQ's
qweight layout); scales fp32 (G, N); zero points ``weight_offset + 8`` fp32 (G, N) when asymmetric.
Per call: ``rnd_act((u - zp) * scale)`` tiles feed ``tl.dot`` in the activation dtype with fp32
accumulation (exactness E1 against the fp32 reference: the weight is rounded once to bf16/fp16).
GPTQ act-order gathers x's columns first.  ``twin_w4a16_gemm`` is the pure-torch twin.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics.int4 import INT4_PER_INT32
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import NATIVE, PreparedLinear
from ..registry import register_kernel
from .common import CudaKernel, jit_module

F32 = torch.float32
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)


def pack_uint4_along_k(q: torch.Tensor) -> torch.Tensor:
    """int4 values (N, K) in [-8, 7] -> int32 (K/8, N): nibble j of row r holds ``q[:, 8r + j] + 8``."""
    n, k = q.shape
    if k % INT4_PER_INT32:
        raise ValueError(f"pack_uint4_along_k: K={k} is not a multiple of 8")
    u = (q.to(torch.int64) + 8).t().reshape(k // 8, 8, n)  # (K/8, 8, N)
    word = (u << _SHIFTS.to(u.device).reshape(1, 8, 1)).sum(1)
    return torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32).contiguous()


def unpack_uint4_along_k(qw: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_uint4_along_k``: int32 (K/8, N) -> int32 int4 values (N, K)."""
    kw, n = qw.shape
    u = ((qw.to(torch.int64) & 0xFFFFFFFF).unsqueeze(1) >> _SHIFTS.to(qw.device).reshape(1, 8, 1)) & 0xF
    return (u.reshape(kw * 8, n) - 8).t().contiguous().to(torch.int32)


def twin_w4a16_gemm(x2, qw, scale, zp, group_k, bias=None):
    """What ``jit.w4a16.w4a16_gemm`` returns, in pure torch (fp32 dot instead of the tensor cores)."""
    k = x2.shape[1]
    u = (unpack_uint4_along_k(qw) + 8).to(F32).t()  # (K, N)
    rows = lambda t: t.repeat_interleave(group_k, dim=0)[:k]  # noqa: E731 - (G, N) -> (K, N)
    z = rows(zp) if zp is not None else 8.0
    w = ((u - z) * rows(scale)).to(x2.dtype).to(F32)
    out = x2.to(F32) @ w
    if bias is not None:
        out = out + bias.to(F32)
    return out.to(x2.dtype)


@dataclass
class CudaW4A16Prepared(PreparedLinear):
    qweight: torch.Tensor | None = None  # int32 (K/8, N) unsigned nibbles along K
    scale: torch.Tensor | None = None  # fp32 (G, N)
    zp: torch.Tensor | None = None  # fp32 (G, N) = weight_offset + 8, or None (symmetric)
    group_k: int = 0
    perm: torch.Tensor | None = None  # int64 (K,) act-order gather, or None


@register_kernel(20)
class CudaW4A16(CudaKernel):
    name = "cuda.w4a16"
    schemes = ("w4a16",)
    summary = "Triton int4-in-register dequant (weights packed 8 per int32 along K) + tl.dot, fp32 accumulation"

    def verified_for(self, device) -> str:
        if device.family == "sm90":
            return ("tested on an H200 (SM90): tests/w4a16/test_w4a16_gpu.py -m gpu, outputs vs the twin and the "
                    "reference, 2026-12-01")
        return super().verified_for(device)

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if ok and act_dtype is not None and act_dtype not in (torch.bfloat16, torch.float16):
            return False, f"the Triton W4A16 GEMM takes bfloat16/float16 activations, got {act_dtype}"
        return ok, why

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        gk = scheme.group_size_of(tensors, k)
        off = scheme.offset_of(tensors)
        bias = tensors.get("bias")
        perm = tensors.get("input_perm")
        ms = tensors.get("mul_scale")
        return CudaW4A16Prepared(
            scheme, self, n, k, act_dtype, mode=NATIVE,
            bias=None if bias is None else bias.to(dev, F32).contiguous(),
            mul_scale=None if ms is None else effective_mul_scale(ms, act_dtype).to(dev),
            qweight=pack_uint4_along_k(tensors["weight"]).to(dev),
            scale=tensors["weight_scale"].to(F32).reshape(n, -1).t().contiguous().to(dev),
            zp=None if off is None else (off.to(F32).reshape(n, -1).t() + 8).contiguous().to(dev),
            group_k=gk, perm=None if perm is None else perm.to(dev, torch.int64))

    def quantize_activation(self, p, x2):
        return {}  # activations stay in float

    def _apply(self, p, x2, add_bias=True):
        J = jit_module("w4a16")  # the Triton module, imported once (not per call)
        self.quantize_activation(p, x2)
        xs = apply_mul_scale(x2, p.mul_scale)
        if p.perm is not None:
            xs = xs.index_select(1, p.perm)
        return J.w4a16_gemm(xs.contiguous(), p.qweight, p.scale, p.zp, p.group_k, p.bias if add_bias else None)
