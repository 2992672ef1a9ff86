"""NPU kernel of nunchaku's W4A4 residuals (INT4 g64 / NVFP4 g16), on A2 / A3 / A5: no Ascend op quantizes
activations per 64 / 16-group to INT4 / NVFP4 or multiplies such operands, so this is the exact reference math
(``kernels/reference/svdq.py``) run with plain torch ops on the NPU: activation smoothing and group quantizer as
tensor ops, the 4-bit weight decoded per call in row chunks, group-scaled operands and one fp32 matmul.
Slow: a decoded fallback, not a native kernel; bit-identical to the reference on the emulator (a real NPU's fp32
matmul may use HF32 unless disabled: untested)."""
from __future__ import annotations

from ..base import FALLBACK
from ..reference.svdq import SVDQ_RESIDUALS, SVDQMath
from ..registry import register_kernel
from .common import NpuKernel


@register_kernel(70)
class NpuSVDQDecoded(SVDQMath, NpuKernel):
    name = "npu.svdq_decoded"
    schemes = SVDQ_RESIDUALS
    summary = ("no INT4-g64 / NVFP4-g16 W4A4 ops on Ascend: the reference math with torch ops on the NPU (group "
               "quantizer, weights decoded per call, fp32 GEMM of the group-scaled operands): slow")

    def mode(self, scheme):
        return FALLBACK, self.summary
