"""Reference kernel of the weight-only family (W8A16): fp32 ``x @ dequant(W).T`` (+ bias)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics.gemm import mx_matmul
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import PreparedLinear
from ..registry import register_kernel
from .common import ReferenceKernel, by_row_chunks

F32 = torch.float32


@dataclass
class WeightOnlyPrepared(PreparedLinear):
    stored: dict | None = None  # the stored tensor set on the device (decoded per call, in row chunks)


@register_kernel(900)
class ReferenceWeightOnly(ReferenceKernel):
    name = "reference.weight_only"
    schemes = ("w8a16",)
    summary = "exact PyTorch reference: weights decoded per call in row chunks, fp32 GEMM"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        stored = {s: self.to_dev(tensors[s]) for s in ("weight", "weight_scale", "weight_offset") if s in tensors}
        return WeightOnlyPrepared(scheme, self, n, k, act_dtype, bias=self.to_dev(tensors.get("bias"), F32),
                                  mul_scale=self.to_dev(effective_mul_scale(tensors.get("mul_scale"), act_dtype)),
                                  mode=self.mode(scheme)[0], stored=stored)

    def quantize_activation(self, p, x2):
        return {}  # activations stay in float

    def apply(self, p, x2, add_bias=True):
        self.quantize_activation(p, x2)
        xs = apply_mul_scale(x2, p.mul_scale).to(F32)
        rows = lambda r: mx_matmul(xs, p.scheme.dequantize_weight({s: t[r] for s, t in p.stored.items()}))  # noqa: E731
        out = by_row_chunks(p.n, p.k, rows)
        if add_bias and p.bias is not None:
            out = out + p.bias
        return out
