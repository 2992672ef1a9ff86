"""Reference kernel of nunchaku's W4A4 residuals (INT4 g64, NVFP4 g16; docs/svd.md): the activation divided by
``smooth_factor`` in the activation dtype, quantized per group (``numerics.svdq``), operands scaled by their group
scales (exact) and one fp32 GEMM (``numerics.svdq.group_matmul``), NVFP4 ``* alpha * wcscales``, then the bias.  Weights
stay in their stored 4-bit form and are decoded in bounded row chunks per call."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...numerics.svdq import group_matmul
from ..base import PreparedLinear
from ..registry import register_kernel
from .common import ReferenceKernel, by_row_chunks

F32 = torch.float32
SVDQ_RESIDUALS = ("nunchaku_int4", "nunchaku_nvfp4")


@dataclass
class SVDQPrepared(PreparedLinear):
    tensors: dict = field(default_factory=dict)  # the stored residual tensors on the kernel's device
    smooth: torch.Tensor | None = None  # smooth_factor (K,) or None


class SVDQMath:
    """The compute shared by the reference and the NPU kernels of these residuals."""

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        st = {s: t.to(self.dev) for s, t in tensors.items()}
        bias = st.get("bias")
        return SVDQPrepared(scheme, self, n, k, act_dtype, bias=None if bias is None else bias.to(F32),
                            mode=self.mode(scheme)[0], tensors=st, smooth=st.get("smooth_factor"))

    def quantize_activation(self, p, x2):
        return p.scheme.quantize_activation(x2, p.smooth)

    def apply(self, p, x2, add_bias=True):
        s = p.scheme
        a, sa = s.activation_operands(self.quantize_activation(p, x2))
        w, sw = s.weight_operands(p.tensors, p.k)

        def rows(r):
            return s.epilogue(group_matmul(a, sa, w[r], sw[r], s.group),
                              {name: (t[r] if name == "wcscales" else t) for name, t in p.tensors.items()})

        out = by_row_chunks(p.n, p.k, rows)
        return out + p.bias if (add_bias and p.bias is not None) else out


@register_kernel(910)
class ReferenceSVDQ(SVDQMath, ReferenceKernel):
    name = "reference.svdq"
    schemes = SVDQ_RESIDUALS
    summary = ("exact PyTorch reference of nunchaku's W4A4 residual: x / smooth_factor, per-group INT4 (64) / NVFP4 "
               "(16) quantizer, group-scaled operands (exact), fp32 GEMM")
