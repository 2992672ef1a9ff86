"""NPU MX kernels, Ascend 950 (A5) only -- the MX ops exist nowhere else (npu_ops.md section 0).

* MXFP8 / MXFP4 / W4A8: ``npu_dynamic_mx_quant`` + MX ``npu_quant_matmul`` (E8M0 scales in the
  (K/64, N, 2) pair layout, ``group_sizes`` [1,1,32] or [0,0,32] for W4A8).
* dual-scale MXFP4: ``npu_dynamic_dual_level_mx_quant(smooth_scale=mul_scale)`` +
  ``npu_dual_level_quant_matmul`` (FP4 weight in FRACTAL_NZ).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics import mx as MX
from ...numerics.constants import E2M1, E4M3
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import NATIVE, PreparedLinear
from ..registry import register_kernel
from .common import F32, NpuKernel


@dataclass
class NpuMXPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # (K, N) [FP4: (K/2, N)] transpose view
    weight_scale: torch.Tensor | None = None  # E8M0 pairs (K/64, N, 2) view


@register_kernel(30)
class NpuMXNative(NpuKernel):
    name = "npu.mx_a5"
    schemes = ("mxfp8", "mxfp4", "w4a8_mxfp")
    socs = ("A5",)
    summaries = {
        "mxfp8": "npu_dynamic_mx_quant(float8_e4m3fn) + MX npu_quant_matmul (E8M0 scales, group_sizes=[1,1,32]); A5 only",
        "mxfp4": "npu_dynamic_mx_quant(float4_e2m1fn_x2) + MX npu_quant_matmul (FP4 x1/x2, group_sizes=[1,1,32]); A5 only",
        "w4a8_mxfp": "npu_dynamic_mx_quant(float8_e4m3fn) + MX W4A8 npu_quant_matmul (group_sizes=[0,0,32]); A5 only",
    }

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        w = scheme.weight_elements({"weight": tensors["weight"].to(dev)})
        bias = tensors.get("bias")
        bias32 = None if bias is None else bias.to(dev, F32)
        if scheme.name == "w4a8_mxfp" and bias32 is not None:
            bias32 = bias32.to(act_dtype).reshape(1, -1)  # the W4A8 MX matmul takes the bias in the x dtype
        return NpuMXPrepared(
            scheme, self, n, k, act_dtype, bias=bias32,
            mul_scale=None if tensors.get("mul_scale") is None else
            effective_mul_scale(tensors["mul_scale"], act_dtype).to(dev), mode=NATIVE,
            weight=w.t(),  # same transposition as the scale
            weight_scale=MX.to_scale_pairs(tensors["weight_scale"].to(dev)).contiguous().transpose(0, 1))

    def _dst(self, npu, fmt):
        return torch.float8_e4m3fn if fmt is E4M3 else npu.float4_e2m1fn_x2

    def quantize_activation(self, p, x2):
        s, npu = p.scheme, self.ops()
        q, sc = npu.npu_dynamic_mx_quant(apply_mul_scale(x2, p.mul_scale), dst_type=self._dst(npu, s.act_fmt),
                                         round_mode=s.act_round_mode, scale_alg=s.act_scale_alg)
        return {"x_q": q, "x_scale": sc}

    def apply(self, p, x2, add_bias=True):
        s, npu = p.scheme, self.ops()
        qa = self.quantize_activation(p, x2)
        kw = dict(scale_dtype=npu.float8_e8m0fnu, pertoken_scale=qa["x_scale"], pertoken_scale_dtype=npu.float8_e8m0fnu,
                  bias=p.bias if add_bias else None, output_dtype=p.act_dtype)
        if s.act_fmt is E2M1:
            kw.update(x1_dtype=npu.float4_e2m1fn_x2, x2_dtype=npu.float4_e2m1fn_x2, group_sizes=[1, 1, 32])
        elif s.weight_fmt is E2M1:
            kw.update(x2_dtype=npu.float4_e2m1fn_x2, group_sizes=[0, 0, 32])
        else:
            kw.update(group_sizes=[1, 1, 32])
        return npu.npu_quant_matmul(qa["x_q"], p.weight, p.weight_scale, **kw)


@dataclass
class NpuMXDualPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # NZ FP4 (N, K/2) as int8
    w_l0: torch.Tensor | None = None  # fp32 (K/512, N)
    w_l1: torch.Tensor | None = None  # E8M0 pairs (N, K/64, 2)
    smooth: torch.Tensor | None = None  # smooth_scale in the activation dtype


@register_kernel(31)
class NpuMXDualNative(NpuKernel):
    name = "npu.mx_dual_a5"
    schemes = ("mxfp4_dual",)
    socs = ("A5",)
    summary = ("npu_dynamic_dual_level_mx_quant(smooth_scale=mul_scale) + npu_dual_level_quant_matmul (NZ weight); "
               "A5 only")

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        w = tensors["weight"].to(dev)
        ms = tensors.get("mul_scale")
        bias = tensors.get("bias")
        return NpuMXDualPrepared(
            scheme, self, n, k, act_dtype, bias=None if bias is None else bias.to(dev, F32), mode=NATIVE,
            weight=self.nz(w.contiguous().view(torch.int8), customize_dtype=torch.int8),
            w_l0=scheme.weight_l0({"weight_dual_scale": tensors["weight_dual_scale"].to(dev)}).t().contiguous(),
            w_l1=MX.to_scale_pairs(tensors["weight_scale"].to(dev)).contiguous(),
            smooth=None if ms is None else ms.to(dev, act_dtype))  # smooth_scale dtype == x dtype

    def quantize_activation(self, p, x2):
        q, l0, l1 = self.ops().npu_dynamic_dual_level_mx_quant(x2, smooth_scale=p.smooth,
                                                               round_mode=p.scheme.act_round_mode)
        return {"x_q": q, "x_l0": l0, "x_scale": l1}

    def apply(self, p, x2, add_bias=True):
        qa = self.quantize_activation(p, x2)
        return self.ops().npu_dual_level_quant_matmul(qa["x_q"], p.weight, qa["x_l0"], p.w_l0, qa["x_scale"], p.w_l1,
                                                      bias=p.bias if add_bias else None, output_dtype=p.act_dtype)
