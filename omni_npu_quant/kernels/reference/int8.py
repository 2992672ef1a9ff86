"""Reference kernels of the int8 family (W8A8 dynamic, W8A8 static): int8 x int8 products with
exact int32 accumulation, then the NPU epilogue order (``numerics.int8``; npu_ops.md section 4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics import int8 as I
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import PreparedLinear
from ..registry import register_kernel
from .common import ReferenceKernel, by_row_chunks

F32 = torch.float32


@dataclass
class Int8DynamicPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # int8 (N, K)
    weight_scale: torch.Tensor | None = None  # fp32 (N, G)
    group_size: int = 0


@register_kernel(900)
class ReferenceInt8Dynamic(ReferenceKernel):
    name = "reference.int8_dynamic"
    schemes = ("w8a8_dynamic",)
    summary = "exact PyTorch reference: per-token int8 quantizer, exact int32 accumulation, fp32 epilogue"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        ws = self.to_dev(tensors["weight_scale"], F32).reshape(n, -1)
        return Int8DynamicPrepared(scheme, self, n, k, act_dtype, bias=self.to_dev(tensors.get("bias"), F32),
                                   mul_scale=self.to_dev(effective_mul_scale(tensors.get("mul_scale"), act_dtype)),
                                   mode=self.mode(scheme)[0], weight=self.to_dev(tensors["weight"]), weight_scale=ws,
                                   group_size=I.group_size_of(k, ws.shape[-1]))

    def quantize_activation(self, p, x2):
        q, sc = I.dynamic_quant_int8(x2, p.mul_scale)
        return {"x_q": q, "x_scale": sc}

    def apply(self, p, x2, add_bias=True):
        qa = self.quantize_activation(p, x2)
        q, sc = qa["x_q"], qa["x_scale"]

        def rows(r):
            w, ws = p.weight[r], p.weight_scale[r]
            if p.group_size == p.k:
                return I.int8_matmul(q, w).to(F32) * ws.reshape(1, -1)
            return I.grouped_int8_matmul(q, ws, p.group_size,
                                         lambda g, qg: I.int8_matmul(qg, w[:, g * p.group_size:(g + 1) * p.group_size]))

        out = by_row_chunks(p.n, p.k, rows) * sc.unsqueeze(-1)
        if add_bias and p.bias is not None:
            out = out + p.bias
        return out


@dataclass
class Int8StaticPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # int8 (N, K)
    act_scale: torch.Tensor | None = None  # 1/input_scale in the activation dtype (1,)
    act_offset: torch.Tensor | None = None  # input_offset in the activation dtype (1,)
    quant_bias: torch.Tensor | None = None  # int32 (N,)
    deq: torch.Tensor | None = None  # effective fp32 deq_scale (N,)


@register_kernel(900)
class ReferenceInt8Static(ReferenceKernel):
    name = "reference.int8_static"
    schemes = ("w8a8_static",)
    summary = "exact PyTorch reference: static int8 quantizer, exact int32 accumulation + quant_bias, x deq_scale"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        scale, offset = I.static_act_operands(tensors["input_scale"], tensors["input_offset"], act_dtype)
        return Int8StaticPrepared(
            scheme, self, n, k, act_dtype, bias=None,  # the float bias is inside quant_bias
            mul_scale=self.to_dev(effective_mul_scale(tensors.get("mul_scale"), act_dtype)), mode=self.mode(scheme)[0],
            weight=self.to_dev(tensors["weight"]), act_scale=self.to_dev(scale), act_offset=self.to_dev(offset),
            quant_bias=self.to_dev(tensors["quant_bias"], torch.int32),
            deq=self.to_dev(I.effective_deq_scale(tensors["deq_scale"], act_dtype)))

    def quantize_activation(self, p, x2):
        return {"x_q": I.static_quant_int8(apply_mul_scale(x2, p.mul_scale), p.act_scale, p.act_offset)}

    def apply(self, p, x2, add_bias=True):
        q = self.quantize_activation(p, x2)["x_q"]

        def rows(r):
            acc = I.int8_matmul(q, p.weight[r])
            if add_bias:
                acc = acc + p.quant_bias[r]
            return acc.to(F32) * p.deq[r]

        return by_row_chunks(p.n, p.k, rows)
