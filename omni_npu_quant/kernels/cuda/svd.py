"""CUDA SVD low-rank kernel: the residual on the CUDA kernel the GPU picks for the residual scheme (``cuda.mx``
on SM90/SM100, ``cuda.int8_dynamic`` / ``cuda.int8_static``, else the exact reference math on the GPU), then the
16-bit low-rank branch.

The branch (``jit/svd_lowrank.py``), by default two Triton kernels (``svd_branch="split"``): the hidden ``x . L1^T``
once per call (fp32 partial sums over K slices, one launch), then rounded once to the activation dtype and multiplied
by L2 with fp32 accumulation onto the residual, read in its own dtype (one launch), writing fp32.  Opt-in
``svd_branch="fused"`` (backend option, else ``OMNI_NPU_QUANT_SVD_BRANCH``; read once, at prepare): one kernel that
recomputes the hidden per (M, N) output tile and accumulates onto the fp32 residual tile.  The residual GEMM and the
activation quantizer are fused with neither.

Split is the default because it measured faster at every point (H200, 2026-12-02, rank 32, vs fused, bf16 F.linear
= 1): 8192 x 8192 graph replay M = 1 mxfp4_svd 0.51 vs 0.34, w8a8_dynamic_svd 0.96 vs 0.49; eager M = 4096 0.99 vs
0.33 (docs/performance.md, "Issue 14 run 4").  Both forms: interpreter-tested on CPU against ``lowrank_branch``;
on an H200 (SM90) by tests/svd/test_svd_gpu.py (2026-12-02); other GPU families untested."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch

from ..reference.svd import SVDKernel, SVDPrepared
from ..registry import register_kernel
from .common import CUDA_DOC, CudaKernel, jit_module

F32 = torch.float32
BRANCH_ENV = "OMNI_NPU_QUANT_SVD_BRANCH"
BRANCHES = ("fused", "split")
DEFAULT_BRANCH = "split"


def branch_choice(option=None) -> str:
    """The branch form for a layer being prepared: backend option ``svd_branch`` over ``OMNI_NPU_QUANT_SVD_BRANCH``;
    default ``split``.  Anything else is an error naming both."""
    v = option if option is not None else os.environ.get(BRANCH_ENV, "")
    v = str(v).strip().lower() or DEFAULT_BRANCH
    if v not in BRANCHES:
        raise ValueError(f"backend option svd_branch / {BRANCH_ENV} must be one of {', '.join(BRANCHES)}, got {v!r}")
    return v


@dataclass
class CudaSVDPrepared(SVDPrepared):
    branch: str = DEFAULT_BRANCH  # "split" (jit/svd_lowrank.lowrank_add_split with plan) or "fused" (lowrank_add)
    plan: object = None  # jit/svd_lowrank.SplitPlan of the split form (built at prepare)


@register_kernel(50)
class CudaSVD(SVDKernel, CudaKernel):
    name = "cuda.svd"
    residual_kind = "cuda"
    summary = "residual on the GPU's kernel for the residual scheme + a Triton low-rank branch kernel (epilogue add)"

    def verified_for(self, device) -> str:
        if device.interpreted:
            return "Triton branch kernel interpreter-tested on CPU (tests/svd); " + CUDA_DOC
        if device.family == "sm90":
            return ("tested on an H200 (SM90): tests/svd/test_svd_gpu.py -m gpu (every SVD scheme vs the reference, the "
                    "branch kernels vs their twin, CUDA graphs, torch.compile; both branch forms) and parity side by "
                    "side (fused branch), 2026-12-02")
        return f"untested on {device.family}: " + CUDA_DOC

    @property
    def branch_how(self) -> str:  # type: ignore[override]
        try:
            branch = self._branch()
        except ValueError as e:  # env / inspect say it; prepare raises it
            return f"low-rank branch: {e}"
        if branch == "split":
            return ("low-rank branch (svd_branch=split, the default): Triton kernels, x.L1^T once per call in fp32 partial sums "
                    "over K slices, then rounded to the activation dtype and .L2^T fp32-accumulated onto the "
                    "residual")
        return ("low-rank branch (svd_branch=fused): one Triton kernel, x.L1^T fp32-accumulated and rounded to the activation dtype, .L2^T "
                "fp32-accumulated onto the fp32 residual tile")

    def _branch(self) -> str:
        return branch_choice(self.target.options.get("svd_branch"))

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        branch = self._branch()  # the option / environment, read once per layer (bad values fail before any work)
        p = SVDKernel.prepare(self, scheme, tensors, act_dtype, n, k, where)
        plan = jit_module("svd_lowrank").SplitPlan(p.l1, p.l2, where=where) if branch == "split" else None
        return CudaSVDPrepared(**{f.name: getattr(p, f.name) for f in fields(SVDPrepared)}, branch=branch, plan=plan)

    apply = CudaKernel.apply  # not SVDKernel's composed torch branch: the CUDA launches, eager or compiled

    def output_dtype(self, p):
        return F32  # lowrank_add writes fp32 (the backend rounds once to the caller's dtype)

    def _apply(self, p, x2, add_bias=True):
        svd_lowrank = jit_module("svd_lowrank")  # imported once, not per call
        rp = p.residual
        res = rp.kernel.apply(rp, x2, add_bias=add_bias)
        if p.branch == "split":  # the residual in its own dtype: the up-projection kernel reads it and adds in fp32
            return svd_lowrank.lowrank_add_split(x2, res, p.plan)
        return svd_lowrank.lowrank_add(x2, p.l1, p.l2, res.to(F32).contiguous())
