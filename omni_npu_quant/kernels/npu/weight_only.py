"""NPU weight-only kernel (A2/A3/A5): W8A16 = ``npu_weight_quant_batchmatmul`` with the offset
negated (the op adds ``antiquant_offset``) and scales in the activation dtype."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics import int8 as I
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import NATIVE, PreparedLinear
from ..registry import register_kernel
from .common import BF16, F32, FP16, NpuKernel, exact_in


@dataclass
class NpuWeightOnlyPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # int8 (K, N) transpose view
    aq_scale: torch.Tensor | None = None
    aq_offset: torch.Tensor | None = None
    group_size: int = 0


@register_kernel(20)
class NpuW8A16(NpuKernel):
    name = "npu.w8a16"
    schemes = ("w8a16",)
    summary = "npu_weight_quant_batchmatmul (antiquant_offset negated; scales in the activation dtype)"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        ws = tensors["weight_scale"].to(dev, F32).reshape(n, -1)
        off = tensors.get("weight_offset")
        groups = ws.shape[-1]
        shape = (lambda v: v.reshape(-1)) if groups == 1 else (lambda v: v.reshape(n, -1).t().contiguous())
        bias = tensors.get("bias")
        p = NpuWeightOnlyPrepared(
            scheme, self, n, k, act_dtype, bias=None if bias is None else bias.to(dev, F32 if act_dtype == BF16 else FP16),
            mul_scale=None if tensors.get("mul_scale") is None else
            effective_mul_scale(tensors["mul_scale"], act_dtype).to(dev), mode=NATIVE,
            weight=tensors["weight"].to(dev).t(), aq_scale=shape(ws).to(act_dtype),
            aq_offset=None if off is None else shape(-off.to(dev, F32)).to(act_dtype),
            group_size=0 if groups == 1 else I.group_size_of(k, groups))
        if not exact_in(ws, act_dtype):
            p.notes.append(f"weight_scale rounded to {act_dtype} (the op needs antiquant_scale in the x dtype)")
        return p

    def quantize_activation(self, p, x2):
        return {}  # activations stay in float

    def apply(self, p, x2, add_bias=True):
        self.quantize_activation(p, x2)
        xs = apply_mul_scale(x2, p.mul_scale)
        return self.ops().npu_weight_quant_batchmatmul(xs, p.weight, p.aq_scale, p.aq_offset,
                                                       bias=p.bias if add_bias else None,
                                                       antiquant_group_size=p.group_size)
