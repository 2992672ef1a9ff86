"""NPU SVD low-rank kernel (A2 / A3 / A5): the residual on the NPU kernel the SoC picks for the residual scheme
(A5: native MX ``npu_dynamic_mx_quant`` + MX ``npu_quant_matmul``, int8 ``npu_dynamic_quant`` + ``npu_quant_matmul``;
A2/A3: ``npu.mx_fallback``, the documented exact-weight fallback: W4A4 residuals run with unquantized activations
unless ``act_fake_quant``), then the 16-bit low-rank branch as two dense matmuls on the cube unit.

Not fused: no torch_npu quant matmul takes a per-row addend (``npu_quant_matmul`` takes a bias vector only), so the
residual output comes back in the activation dtype (one rounding the reference does not have) and the branch
``round_act(x . L1^T) . L2^T`` is computed with fp32 output and added in fp32, then rounded once more.  On the
emulator the branch products are fp32-accumulated like the cube unit's."""
from __future__ import annotations

import torch

from ..reference.svd import SVDKernel
from ..registry import register_kernel
from .common import F32, NpuKernel


@register_kernel(60)
class NpuSVD(SVDKernel, NpuKernel):
    name = "npu.svd"
    residual_kind = "npu"
    summary = "residual on the SoC's kernel for the residual scheme + two dense 16-bit matmuls for the low-rank branch"
    branch_how = ("low-rank branch: x.L1^T (16-bit matmul, fp32 accumulation, rounded to the activation dtype), .L2^T "
                  "with fp32 output, added in fp32 to the residual output (a quant-matmul residual comes back already "
                  "rounded to the activation dtype: <= 1 extra rounding vs the reference)")

    def branch(self, p, x2):
        if self.target.device.simulated:  # the cube unit: fp32 accumulation, one rounding to the activation dtype
            h = torch.matmul(x2.to(F32), p.l1.to(F32).t()).to(p.act_dtype)
        else:  # pragma: no cover - real NPU only
            h = torch.matmul(x2, p.l1.t())
        return torch.matmul(h.to(F32), p.l2.to(F32).t())  # rank-sized K, fp32 output

    def apply(self, p, x2, add_bias=True):
        rp = p.residual  # its output is already rounded to the activation dtype by the quant matmul
        return rp.kernel.apply(rp, x2, add_bias=add_bias).to(F32) + self.branch(p, x2)
