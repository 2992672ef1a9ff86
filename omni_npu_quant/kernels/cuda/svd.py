"""CUDA SVD low-rank kernel: the residual on the CUDA kernel the GPU picks for the residual scheme (``cuda.mx``
on SM90/SM100, ``cuda.int8_dynamic`` / ``cuda.int8_static``, else the exact reference math on the GPU), then the
16-bit low-rank branch.

The branch is one Triton kernel (``jit/svd_lowrank.py``): per (M, N) tile it recomputes the rank-r hidden
``x . L1^T`` with fp32 accumulation, rounds it to the activation dtype, and accumulates ``. L2^T`` in fp32 onto the
fp32 residual tile it reads (the epilogue add), writing fp32.  The residual GEMM and the activation quantizer are
not fused with it (two launches).  Interpreter-tested on CPU against ``lowrank_branch``; on an H200 (SM90) by
tests/svd/test_svd_gpu.py (2026-12-02); other GPU families untested."""
from __future__ import annotations

import torch

from ..reference.svd import SVDKernel
from ..registry import register_kernel
from .common import CUDA_DOC, CudaKernel, jit_module

F32 = torch.float32


@register_kernel(50)
class CudaSVD(SVDKernel, CudaKernel):
    name = "cuda.svd"
    residual_kind = "cuda"
    summary = "residual on the GPU's kernel for the residual scheme + a Triton low-rank branch kernel (epilogue add)"
    branch_how = ("low-rank branch: Triton kernel, x.L1^T fp32-accumulated and rounded to the activation dtype, .L2^T "
                  "fp32-accumulated onto the fp32 residual tile")

    def verified_for(self, device) -> str:
        if device.interpreted:
            return "Triton branch kernel interpreter-tested on CPU (tests/svd); " + CUDA_DOC
        if device.family == "sm90":
            return ("tested on an H200 (SM90): tests/svd/test_svd_gpu.py -m gpu (every SVD scheme vs the reference, the "
                    "branch kernel vs its twin, CUDA graphs, torch.compile) and parity side by side, 2026-12-02")
        return f"untested on {device.family}: " + CUDA_DOC

    apply = CudaKernel.apply  # not SVDKernel's composed torch branch: the CUDA launches, eager or compiled

    def output_dtype(self, p):
        return F32  # lowrank_add writes fp32 (the backend rounds once to the caller's dtype)

    def _apply(self, p, x2, add_bias=True):
        svd_lowrank = jit_module("svd_lowrank")  # imported once, not per call
        rp = p.residual
        res = rp.kernel.apply(rp, x2, add_bias=add_bias).to(F32).contiguous()
        return svd_lowrank.lowrank_add(x2, p.l1, p.l2, res)
