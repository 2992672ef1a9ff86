"""NPU int8 kernels (A2/A3/A5): W8A8 dynamic = ``npu_dynamic_quant`` + per-token
``npu_quant_matmul`` (int8 weight (K, N) in FRACTAL_NZ); W8A8 static =
``npu_quantize(x, act(1/input_scale), act(input_offset))`` + ``npu_quant_matmul(deq_scale,
bias=quant_bias)`` (fp32 deq_scale for bf16, int64 via ``npu_trans_quant_param`` for fp16)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...numerics import int8 as I
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import FALLBACK, NATIVE, PreparedLinear
from ..registry import register_kernel
from .common import F32, FP16, NpuKernel, exact_in


@dataclass
class NpuInt8DynamicPrepared(PreparedLinear):
    weights: list = field(default_factory=list)  # NZ int8 (K, N), or one (K_g, N) per K-group
    weight_scale: torch.Tensor | None = None  # fp32 (N,) per channel, (N, G) per group
    group_size: int = 0  # 0 = per channel
    smooth: torch.Tensor | None = None  # smooth_scales in the activation dtype


@register_kernel(10)
class NpuInt8Dynamic(NpuKernel):
    name = "npu.int8_dynamic"
    schemes = ("w8a8_dynamic",)
    summary = "npu_dynamic_quant + per-token npu_quant_matmul (int8 weight, FRACTAL_NZ)"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        w = tensors["weight"].to(dev)
        ws = tensors["weight_scale"].to(dev, F32).reshape(n, -1)
        ms = tensors.get("mul_scale")
        p = NpuInt8DynamicPrepared(scheme, self, n, k, act_dtype, bias=None if tensors.get("bias") is None else
                                   tensors["bias"].to(dev, F32), mul_scale=None, mode=NATIVE,
                                   smooth=None if ms is None else ms.to(dev, act_dtype))  # smoothScales dtype == x dtype
        if ms is not None and not exact_in(ms.float(), act_dtype):
            p.notes.append(f"mul_scale is not representable in {act_dtype}: npu_dynamic_quant takes it rounded")
        groups = ws.shape[-1]
        if groups == 1:
            p.weights, p.weight_scale = [self.nz(w.t())], ws.reshape(-1)
        else:
            gs = I.group_size_of(k, groups)
            p.weights = [self.nz(w[:, g * gs:(g + 1) * gs].t()) for g in range(groups)]
            p.weight_scale, p.group_size, p.mode = ws, gs, FALLBACK
            p.notes.append(f"per-group int8 weight scale (group {gs}): npu_quant_matmul has no int8 per-group mode; "
                           f"int32 output per group, scales applied in fp32 (exact)")
        return p

    def quantize_activation(self, p, x2):
        q, sc = self.ops().npu_dynamic_quant(x2, smooth_scales=p.smooth)
        return {"x_q": q, "x_scale": sc}

    def apply(self, p, x2, add_bias=True):
        npu = self.ops()
        qa = self.quantize_activation(p, x2)
        q, sc = qa["x_q"], qa["x_scale"]
        bias = p.bias if add_bias else None
        if not p.group_size:
            return npu.npu_quant_matmul(q, p.weights[0], p.weight_scale, pertoken_scale=sc, bias=bias,
                                        output_dtype=p.act_dtype)
        one = torch.ones(1, dtype=F32, device=q.device)
        acc = I.grouped_int8_matmul(q, p.weight_scale, p.group_size, lambda g, qg: npu.npu_quant_matmul(
            qg.contiguous(), p.weights[g], one, output_dtype=torch.int32))
        out = acc * sc.unsqueeze(-1)
        if bias is not None:
            out = out + bias
        return out.to(p.act_dtype)


@dataclass
class NpuInt8StaticPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # NZ int8 (K, N)
    act_scale: torch.Tensor | None = None
    act_offset: torch.Tensor | None = None
    quant_bias: torch.Tensor | None = None
    deq: torch.Tensor | None = None  # fp32 (bf16 output) or int64 from npu_trans_quant_param (fp16 output)


@register_kernel(11)
class NpuInt8Static(NpuKernel):
    name = "npu.int8_static"
    schemes = ("w8a8_static",)
    summary = "npu_quantize + npu_quant_matmul with deq_scale (fp32 for bf16, int64 for fp16) and int32 quant_bias"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        scale, offset = I.static_act_operands(tensors["input_scale"], tensors["input_offset"], act_dtype)
        full = I.deq_scale_fp32(tensors["deq_scale"]).to(dev)
        return NpuInt8StaticPrepared(
            scheme, self, n, k, act_dtype, bias=None,  # folded into quant_bias
            mul_scale=None if tensors.get("mul_scale") is None else
            effective_mul_scale(tensors["mul_scale"], act_dtype).to(dev), mode=NATIVE,
            weight=self.nz(tensors["weight"].to(dev).t()), act_scale=scale.to(dev), act_offset=offset.to(dev),
            quant_bias=tensors["quant_bias"].to(dev, torch.int32),
            deq=self.ops().npu_trans_quant_param(full) if act_dtype == FP16 else full)

    def quantize_activation(self, p, x2):
        xs = apply_mul_scale(x2, p.mul_scale)
        return {"x_q": self.ops().npu_quantize(xs, p.act_scale, p.act_offset, torch.qint8, -1, False)}

    def apply(self, p, x2, add_bias=True):
        q = self.quantize_activation(p, x2)["x_q"]
        return self.ops().npu_quant_matmul(q, p.weight, p.deq, bias=p.quant_bias if add_bias else None,
                                           output_dtype=p.act_dtype)
