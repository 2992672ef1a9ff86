"""Reference kernels of the MX family (MXFP8, MXFP4, W4A8 MXFP, dual-scale MXFP4): exact
element x E8M0 operands, fp32 accumulation (``numerics.gemm.mx_matmul``); dual-scale sums fp32
partials per 512-block scaled by both level-0 scales (``numerics.gemm.dual_level_matmul``).
Weights are decoded per call in bounded row chunks (no full-precision copy is kept)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics import mx as MX
from ...numerics.e8m0 import code_to_exponent
from ...numerics.gemm import dual_level_matmul, mx_matmul
from ...schemes.base import effective_mul_scale
from ..base import PreparedLinear
from ..registry import register_kernel
from .common import ReferenceKernel, by_row_chunks

F32 = torch.float32


@dataclass
class MXPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # stored elements (E4M3 (N, K) or packed FP4 (N, K/2))
    weight_scale: torch.Tensor | None = None  # stored E8M0 codes (N, K/32), decoded per row chunk
    weight_l0: torch.Tensor | None = None  # dual-scale: fp32 (N, K/512)


@register_kernel(900)
class ReferenceMX(ReferenceKernel):
    name = "reference.mx"
    schemes = ("mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")
    summary = "exact PyTorch reference: exact MX operands, fp32 accumulation (dual-scale: fp32 partial per 512)"

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        l0 = scheme.weight_l0(tensors).to(self.dev) if scheme.dual_level else None
        return MXPrepared(scheme, self, n, k, act_dtype, bias=self.to_dev(tensors.get("bias"), F32),
                          mul_scale=self.to_dev(effective_mul_scale(tensors.get("mul_scale"), act_dtype)),
                          mode=self.mode(scheme)[0], weight=self.to_dev(scheme.weight_elements(tensors)),
                          weight_scale=self.to_dev(tensors["weight_scale"]), weight_l0=l0)

    def quantize_activation(self, p, x2):
        return p.scheme.activation_storage(p.scheme.quantize_activation(x2, p.mul_scale))

    def weight_rows(self, p, r) -> torch.Tensor:
        """Exact fp32 level-1 weight values of output rows ``r``."""
        return MX.mx_dequantize(MX.mx_decode(p.weight[r], p.scheme.weight_fmt, p.k), code_to_exponent(p.weight_scale[r]))

    def apply(self, p, x2, add_bias=True):
        a, a_l0 = p.scheme.activation_from_storage(self.quantize_activation(p, x2), p.k)
        bias = p.bias if add_bias else None
        if p.scheme.dual_level:
            out = by_row_chunks(p.n, p.k, lambda r: dual_level_matmul(a, a_l0, self.weight_rows(p, r), p.weight_l0[r]))
        else:
            out = by_row_chunks(p.n, p.k, lambda r: mx_matmul(a, self.weight_rows(p, r)))
        return out if bias is None else out + bias
