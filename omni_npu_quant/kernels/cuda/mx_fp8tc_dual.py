"""SM90 FP8-tensor-core kernel for dual-scale MXFP4 (``mxfp4_dual``, msModelSlim W4A4_MXFP4_DUALSCALE), opt-in.

``cuda.mx_fp8tc`` moves each MX row onto E4M3 with one power-of-two row scale; dual-scale cannot fold its fp32
level-0 factors (one per 512-chunk) into a row scale, but it can fold them into one scale per (row, 512-chunk).
Each chunk of a row is rescaled onto E4M3 with its own power-of-two exponent ``S[m, c]`` and the scale
``2**S[m, c] * l0[m, c]``; the GEMM is an FP8 GEMM with per-(row, chunk) scales on both operands, fp32 promotion at
every 512 boundary (``jit/fp8tc_dual.py``).  The weight is rescaled once at prepare (pure torch, the twin), the
activation per call: cuda.mx's dual quantizer (the bytes ``quantize_activation`` reports, identical to the
reference) plus a small Triton kernel writing the chunk-rescaled E4M3 operand and its scales.  M <= 16 calls go
to ``cuda.mx`` (its decode / ``tl.dot_scaled`` path, exact).

Opt-in: backend option ``mx_fp8tc_dual="on"`` or ``OMNI_NPU_QUANT_CUDA_MX_FP8TC_DUAL=1`` (read when the kernel is
made); bf16 / fp16 activations, SM90 only.  Memory: the E4M3 weight copy (N x K bytes) and its fp32 scales
(N x K/512) beside the stored MX weight.

Exactness: E2, as cuda.mx_fp8tc: ``|y - ref| <= 1e-3 * max|ref| + 1 ulp`` of the output dtype.  Sources: chunks whose
non-zero blocks span more than 14 binades lose bits below 2**-9 of the chunk's largest block scale (counted for
the weight at prepare), and the tensor cores' reduced-precision accumulation inside each chunk.

Tested: in Triton's interpreter on the CPU (tests/backends/cuda/test_fp8tc_dual_cpu.py) and on an H200
(tests/backends/cuda/test_fp8tc_dual_gpu.py, 26 passed, 2026-12-02).  Measured there at M = 4096: 0.27-0.32x bf16,
1.15-1.35x the default cuda.mx path, far from the FP8 rowwise GEMM (docs/performance.md run 5): it stays opt-in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..base import NATIVE
from ..registry import register_kernel
from .common import CUDA_DOC, jit_module
from .mx import CudaMX, CudaMXPrepared

DUAL_ENV = "OMNI_NPU_QUANT_CUDA_MX_FP8TC_DUAL"
OPTION = "mx_fp8tc_dual"
DECODE_M = 16  # M <= 16: cuda.mx (as cuda.mx_fp8tc's default)
VERIFIED_SM90 = ("tested on an H200 (SM90), 2026-12-02: tests/backends/cuda/test_fp8tc_dual_gpu.py -m gpu (rescale "
                 "bytes and GEMM vs the twins, apply vs the reference, CUDA graphs, torch.compile) and benchmarked "
                 "(opt-in: 0.27-0.32x bf16 at M=4096)")
F32 = torch.float32


@dataclass
class CudaMXFp8DualPrepared(CudaMXPrepared):
    wr: torch.Tensor | None = None  # chunk-rescaled E4M3 weight bytes (N, Kp) uint8
    sw: torch.Tensor | None = None  # fp32 (N, Kp/512) per-(row, chunk) scales 2**S * l0, chunk-major storage
    exact_chunks: int = 0  # weight (row, chunk) pairs whose rescale is exact
    min_m: int = DECODE_M + 1  # below: the exact cuda.mx path


def _on(value) -> bool:
    return str(value).strip().lower() in ("on", "1", "true", "yes")


@register_kernel(16)
class CudaMXFp8TCDual(CudaMX):
    name = "cuda.mx_fp8tc_dual"
    schemes = ("mxfp4_dual",)
    families = ("sm90",)
    summary = ("opt-in: dual-scale MXFP4 rescaled per (row, 512-chunk) onto E4M3 (cuda.mx's dual quantizer + a Triton "
               "rescale kernel) + FP8 tensor-core GEMM with per-chunk fp32 scales (M <= 16 on cuda.mx); E2: within "
               "rtol 1e-3 of the reference; tested on an H200, slower than bf16 (0.27-0.32x at M=4096)")

    @classmethod
    def family_refusal(cls, family):
        if family == "sm100":
            return "SM100 has native MX tensor cores (cuda.mx lowers tl.dot_scaled to them)"
        return f"FP8-tensor-core dual-scale MX path is built for SM90 only, not {family}"

    def __init__(self, target):
        super().__init__(target)
        opt = target.options.get(OPTION)
        self.enabled = _on(opt) if opt is not None else _on(os.environ.get(DUAL_ENV, "0"))

    def mode(self, scheme):
        return NATIVE, self.summary

    def verified_for(self, device):
        return VERIFIED_SM90 if device.family == "sm90" else CUDA_DOC

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if not ok:
            return ok, why
        if not self.enabled:
            return False, f"opt-in, off (backend option {OPTION}='on' or {DUAL_ENV}=1)"
        if not scheme.dual_level:
            return False, f"{self.name} implements dual-scale schemes only, not {scheme.name}"
        if act_dtype is not None and act_dtype not in (torch.bfloat16, torch.float16):
            return False, f"activation dtype {act_dtype} not supported (bf16 / fp16)"
        return True, ""

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        d = jit_module("fp8tc_dual")
        base = super().prepare(scheme, tensors, act_dtype, n, k, where)
        if base.kp % d.CHUNK or base.l0w is None or base.l0w.shape != (n, base.kp // d.CHUNK):
            raise ValueError(f"{where}: {self.name} needs K % 512 == 0 and weight_dual_scale (N, K/512), got K={k}, "
                             f"weight_dual_scale {None if base.l0w is None else tuple(base.l0w.shape)}")
        wr, sw, exact = d.twin_chunk_rescale(base.weight, base.weight_scale, base.l0w)
        p = CudaMXFp8DualPrepared(**{f: getattr(base, f) for f in base.__dataclass_fields__})
        p.kernel = self
        p.wr = wr.contiguous()
        p.sw = sw.t().contiguous().t()  # (N, nc) seen over a (nc, N) buffer: the GEMM reads one chunk's N scales
        p.exact_chunks = int(exact.sum())
        total = exact.numel()
        if p.exact_chunks < total:
            p.notes.append(f"{self.name}: {total - p.exact_chunks} of {total} weight (row, 512-chunk) pairs are not "
                           f"exact on the E4M3 grid (error below 2**-9 of the chunk's largest block scale; E2 contract)")
        p.notes.append(f"{self.name}: M <= {DECODE_M} runs cuda.mx; M > {DECODE_M} the per-chunk-scaled FP8 GEMM")
        return p

    def _apply(self, p, x2, add_bias=True):
        if x2.shape[0] < p.min_m:
            return super()._apply(p, x2, add_bias)
        d, ops = jit_module("fp8tc_dual"), jit_module("ops")  # imported once, not per call
        _, _, _, xr, sa = d.dual_quant_chunkwise(x2, p.smooth, p.scheme.act_round_mode, launch_opts=ops._launch_opts())
        return d.fp8_chunk_gemm(xr, sa, p.wr, p.sw, p.n, p.kp, p.act_dtype, bias=p.bias if add_bias else None,
                                pick=ops._pick, m_bucket=ops.m_bucket, launch_opts=ops._launch_opts(), tuned=ops._TUNED)
