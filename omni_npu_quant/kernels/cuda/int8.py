"""CUDA int8 kernels: fused Triton per-token (or static) int8 quantizer, Triton int8 GEMM with
exact int32 accumulation and the NPU epilogue fused (exactness E0: bit-identical to the reference).

Opt-in small-M path (backend option ``gemv=1`` or ``OMNI_NPU_QUANT_CUDA_GEMV=1``; decided per layer at
prepare): M <= 16 with per-channel weight scales runs ``jit/gemv.py``'s split-K int8 GEMV (int32
partials, the same epilogue: still E0).  Off by default until the H200 probe has measured it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics import int8 as I
from ...schemes.base import effective_mul_scale
from ..base import NATIVE, KernelRefusal, PreparedLinear
from ..registry import register_kernel
from .common import CudaKernel, gemv_requested, jit_module

F32 = torch.float32
def _family_note(family: str | None) -> str:
    if family == "sm100":
        return " (CUTLASS int8 unsupported on cc>=10.0; Triton int8 untested on SM100)"
    if family == "sm120":
        return " (SM120 unverified)"
    if family in ("sm80", "sm89"):
        return " (untested on this family)"
    return ""


@dataclass
class CudaInt8Prepared(PreparedLinear):
    weight: torch.Tensor | None = None  # int8 (N, K)
    weight_scale: torch.Tensor | None = None  # fp32 (N, G)
    group_k: int = 0
    smooth: torch.Tensor | None = None  # effective mul_scale (fp32) or None
    act_scale: torch.Tensor | None = None  # static: 1/input_scale (act dtype)
    act_offset: torch.Tensor | None = None
    quant_bias: torch.Tensor | None = None
    deq: torch.Tensor | None = None
    gemv: bool = False  # M <= 16 through jit/gemv.py (chosen at prepare)


def _gemv_on(kernel, p, n, k, n_groups):
    """Prepare-time switch of the small-M int8 path (and its workspace)."""
    if not gemv_requested(kernel):
        return p  # default: no triton import at prepare
    gemv = jit_module("gemv")
    on = gemv.int8_supported(n_groups)
    if on and kernel.torch_device.type == "cuda":
        gemv.reserve(kernel.torch_device, n, k, kind="int8")
    p.gemv = on
    return p


@register_kernel(10)
class CudaInt8Dynamic(CudaKernel):
    name = "cuda.int8_dynamic"
    schemes = ("w8a8_dynamic",)
    summary = "Triton fused int8 quantizer + int8 tl.dot (int32) + fused NPU epilogue"

    def mode(self, scheme):
        return NATIVE, self.summary + _family_note(self.target.device.family)

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        ws = tensors["weight_scale"].to(dev, F32).reshape(n, -1).contiguous()
        gk = k // ws.shape[1]
        if ws.shape[1] > 1 and gk % 32:
            raise KernelRefusal(f"per-group size {gk} is not a multiple of 32")
        ms = tensors.get("mul_scale")
        bias = tensors.get("bias")
        p = CudaInt8Prepared(scheme, self, n, k, act_dtype, mode=NATIVE,
                             bias=None if bias is None else bias.to(dev, F32).contiguous(),
                             weight=tensors["weight"].to(dev).contiguous(), weight_scale=ws, group_k=gk,
                             smooth=None if ms is None else effective_mul_scale(ms, act_dtype).to(dev).contiguous())
        return _gemv_on(self, p, n, k, ws.shape[1])

    def quantize_activation(self, p, x2):
        q, sc = jit_module("ops").int8_dynamic_quant(x2, p.smooth)
        return {"x_q": q, "x_scale": sc}

    def _apply(self, p, x2, add_bias=True):
        ops = jit_module("ops")  # imported once, not per call
        if type(self).quantize_activation is CudaInt8Dynamic.quantize_activation:
            q, sx = ops.int8_dynamic_quant(x2, p.smooth)  # what quantize_activation runs, without its dict
        else:  # a subclass with its own quantizer: apply runs that one
            qa = self.quantize_activation(p, x2)
            q, sx = qa["x_q"], qa["x_scale"]
        if p.gemv and x2.shape[0] <= 16:
            return jit_module("gemv").int8_gemv(q, p.weight, p.act_dtype, sx=sx, ws=p.weight_scale,
                                                     bias=p.bias if add_bias else None)
        return ops.int8_gemm(q, p.weight, p.act_dtype, sx=sx, ws=p.weight_scale, bias=p.bias if add_bias else None,
                             group_k=p.group_k)


@register_kernel(11)
class CudaInt8Static(CudaKernel):
    name = "cuda.int8_static"
    schemes = ("w8a8_static",)
    summary = "Triton int8 GEMM, quant_bias added in int32, x deq_scale in fp32"

    def mode(self, scheme):
        return NATIVE, self.summary + _family_note(self.target.device.family)

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        scale, offset = I.static_act_operands(tensors["input_scale"], tensors["input_offset"], act_dtype)
        ms = tensors.get("mul_scale")
        p = CudaInt8Prepared(scheme, self, n, k, act_dtype, mode=NATIVE, bias=None,
                             weight=tensors["weight"].to(dev).contiguous(),
                             smooth=None if ms is None else effective_mul_scale(ms, act_dtype).to(dev).contiguous(),
                             act_scale=scale.to(dev), act_offset=offset.to(dev),
                             quant_bias=tensors["quant_bias"].to(dev, torch.int32).contiguous(),
                             deq=I.effective_deq_scale(tensors["deq_scale"], act_dtype).to(dev).contiguous())
        return _gemv_on(self, p, n, k, 1)

    def quantize_activation(self, p, x2):
        return {"x_q": jit_module("ops").int8_static_quant(x2, p.smooth, p.act_scale, p.act_offset)}

    def _apply(self, p, x2, add_bias=True):
        ops = jit_module("ops")  # imported once, not per call
        if type(self).quantize_activation is CudaInt8Static.quantize_activation:
            q = ops.int8_static_quant(x2, p.smooth, p.act_scale, p.act_offset)  # quantize_activation's, no dict
        else:  # a subclass with its own quantizer: apply runs that one
            q = self.quantize_activation(p, x2)["x_q"]
        if p.gemv and x2.shape[0] <= 16:
            return jit_module("gemv").int8_gemv(q, p.weight, p.act_dtype,
                                                     quant_bias=p.quant_bias if add_bias else None, deq=p.deq,
                                                     static=True)
        return ops.int8_gemm(q, p.weight, p.act_dtype, quant_bias=p.quant_bias if add_bias else None, deq=p.deq,
                             static=True)
