"""Reference kernel of W4A16: fp32 ``x[:, input_perm] @ dequant(W).T`` (+ bias), weights decoded
exactly (``(q - offset) * scale`` in fp32) per call in row chunks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics.gemm import mx_matmul
from ...numerics.int4 import dequantize_weight_int4
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import PreparedLinear
from ..registry import register_kernel
from .common import ReferenceKernel, by_row_chunks

F32 = torch.float32


@dataclass
class W4A16RefPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # int8 (N, K) int4 values, stored column order
    scale: torch.Tensor | None = None  # (N, G) as stored
    offset: torch.Tensor | None = None  # (N, G) or None (symmetric)
    perm: torch.Tensor | None = None  # int64 (K,) act-order gather of x, or None


@register_kernel(900)
class ReferenceW4A16(ReferenceKernel):
    name = "reference.w4a16"
    schemes = ("w4a16",)
    summary = "exact PyTorch reference: int4 weights decoded per call in row chunks (fp32), fp32 GEMM"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        perm = tensors.get("input_perm")
        return W4A16RefPrepared(
            scheme, self, n, k, act_dtype, bias=self.to_dev(tensors.get("bias"), F32),
            mul_scale=self.to_dev(effective_mul_scale(tensors.get("mul_scale"), act_dtype)),
            mode=self.mode(scheme)[0], weight=self.to_dev(tensors["weight"]),
            scale=self.to_dev(tensors["weight_scale"]).reshape(n, -1),
            offset=None if scheme.offset_of(tensors) is None else self.to_dev(tensors["weight_offset"]).reshape(n, -1),
            perm=None if perm is None else self.to_dev(perm, torch.int64))

    def quantize_activation(self, p, x2):
        return {}  # activations stay in float

    def apply(self, p, x2, add_bias=True):
        self.quantize_activation(p, x2)
        xs = apply_mul_scale(x2, p.mul_scale).to(F32)
        if p.perm is not None:
            xs = xs.index_select(1, p.perm)

        def rows(r):
            off = None if p.offset is None else p.offset[r]
            return mx_matmul(xs, dequantize_weight_int4(p.weight[r], p.scale[r], off))

        out = by_row_chunks(p.n, p.k, rows)
        if add_bias and p.bias is not None:
            out = out + p.bias
        return out
