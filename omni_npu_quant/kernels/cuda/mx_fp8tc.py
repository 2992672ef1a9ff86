"""SM90 FP8-tensor-core MX kernel (single-scale MXFP8, MXFP4, W4A8 MXFP): MX operands rescaled per
row onto the E4M3 grid (one fp32 power-of-two scale per row), then a rowwise-scaled FP8 GEMM on the
FP8 tensor cores (Triton ``tl.dot`` of float8e4nv, fp32 accumulation promoted every 128 K).

Exactness: E2, within rtol 1e-3 of the reference (as op-plugin's MX matmul tests), not bit-identical:
rows whose blocks span more than the E4M3 window lose bits below 2**-9 of the row's largest block
scale, and the FP8 tensor cores accumulate in reduced precision inside each 128-K chunk.  Which
weight rows are exact is counted at prepare (a note names the count).  The activation quantizer is
one fused kernel (``jit/fp8tc_quant2.py`` by default, below) that writes the MX bytes and codes ``quantize_activation``
reports (identical to the reference) and the row-rescaled E4M3 bytes the GEMM reads.

Prepare-time choices (``fp8tc_gemm`` / ``OMNI_NPU_QUANT_CUDA_FP8TC_GEMM``): by default ("scaled_mm") the
kernel takes bf16 layers with N % 16 == 0 and runs M > 16 through ``torch._scaled_mm`` (rowwise scales,
cuBLAS / CUTLASS, bias rounded to bf16 in its epilogue); M <= 16 calls go to the exact ``cuda.mx`` path
(decode kernel / ``tl.dot_scaled``); other layers are refused (cuda.mx runs them).  "auto" adds the Triton
FP8 GEMM (fp16 / fp32 activations, any N, and M <= 16 for FP4 weights, measured faster there; it passed its
interpreter twin and the H200 tests of 2026-12-02); "triton" uses it alone.  ``fp8tc_min_m`` overrides the
M threshold.  Memory: the row-rescaled E4M3 weight (N x Kp bytes) is kept
beside the stored MX weight.  Off: backend option ``mx_fp8tc="off"`` or ``OMNI_NPU_QUANT_CUDA_MX_FP8TC=0``.

Activation quantizer (``fp8tc_quant`` / ``OMNI_NPU_QUANT_FP8TC_QUANT``, read when the kernel is made, fixed per
layer at prepare): "v2", the default since 2026-12-02, is ``jit/fp8tc_quant2.py`` (a plan per layer, several rows
per program, FP8-convert roundings); "v1" is the earlier ``jit/fp8tc.py::mx_quant_rowwise`` (one program per row).
Both passed tests/backends/cuda/test_fp8tc_gpu.py on the H200 (2026-12-02: bytes bit-identical to the reference,
v2's every-fp32 rounding sweep, v2 apply bit-identical to v1).  In one H200 run of that day at M=4096 (eager,
x bf16 F.linear), mxfp8 / mxfp4 / w4a8_mxfp ran 1.41-1.77x with v2 and 1.02-1.61x with v1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..base import NATIVE, KernelRefusal
from ..registry import register_kernel
from .common import CUDA_DOC, jit_module
from .mx import CudaMX, CudaMXPrepared

FP8TC_ENV = "OMNI_NPU_QUANT_CUDA_MX_FP8TC"
GEMM_ENV = "OMNI_NPU_QUANT_CUDA_FP8TC_GEMM"
# "scaled_mm" (default): bf16 activations, N % 16 == 0, M > 16 through torch._scaled_mm, the one GEMM of this
# path checked against the reference on the H200 (2026-12-01); everything else goes to cuda.mx.
# "auto": also the Triton FP8 GEMM (fp16 / fp32 activations, N % 16 != 0, and M <= 16 for FP4 weights, where it
# measured faster); "triton": the Triton FP8 GEMM only.  The Triton GEMM passed its twin in Triton's
# interpreter and tests/backends/cuda/test_fp8tc_gpu.py on the H200 (2026-12-02); not the default (it was not faster
# than torch._scaled_mm at M > 16 for bf16).
GEMMS = ("scaled_mm", "auto", "triton")
QUANT_ENV = "OMNI_NPU_QUANT_FP8TC_QUANT"
QUANTS = ("v2", "v1")  # the activation quantizer: jit/fp8tc_quant2.py (default) or jit/fp8tc.py (opt-in)
F32 = torch.float32


@dataclass
class CudaMXFp8Prepared(CudaMXPrepared):
    wr: torch.Tensor | None = None  # row-rescaled E4M3 weight bytes (N, Kp) uint8
    sw: torch.Tensor | None = None  # fp32 (N,) row scales 2**S_n (NaN for a row with a NaN block scale)
    exact_rows: int = 0  # weight rows whose rescale is exact
    min_m: int = 1  # below: the exact cuda.mx path
    scaled_mm: bool = False  # M > DECODE_M: torch._scaled_mm (cuBLAS / CUTLASS rowwise) instead of the Triton GEMM
    sw_row: torch.Tensor | None = None  # sw as (1, N) for torch._scaled_mm
    bias_bf16: torch.Tensor | None = None  # torch._scaled_mm takes a bf16 bias
    q_plan: tuple | None = None  # the opt-in "v2" quantizer's plan (fp8tc_quant2.rowwise_plan); None: the default


DECODE_M = 16  # at M <= 16 the Triton FP8 GEMM beat torch._scaled_mm on the H200 (2026-12-01 bench)
_SCALED_MM_OK: dict = {}


@register_kernel(15)
class CudaMXFp8TC(CudaMX):
    name = "cuda.mx_fp8tc"
    schemes = ("mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")  # dual: listed so that its refusal is shown
    families = ("sm90",)
    summary = ("MX operands rescaled per row onto E4M3 (fused Triton quantizer) + rowwise-scaled FP8 tensor-core GEMM "
               "(torch._scaled_mm for bf16 at M > 16; M <= 16 on cuda.mx); E2: within rtol 1e-3 of the reference")

    @classmethod
    def family_refusal(cls, family):
        if family == "sm100":
            return "SM100 has native MX tensor cores (cuda.mx lowers tl.dot_scaled to them)"
        return f"FP8-tensor-core MX path is built and tested for SM90 only, not {family}"

    def __init__(self, target):
        super().__init__(target)
        self.enabled = str(target.options.get("mx_fp8tc") or os.environ.get(FP8TC_ENV, "on")).lower() \
            not in ("off", "0", "false", "no")
        self.min_m = target.options.get("fp8tc_min_m")
        self.gemm = str(target.options.get("fp8tc_gemm") or os.environ.get(GEMM_ENV, "scaled_mm")).lower()
        if self.gemm not in GEMMS:
            raise ValueError(f"fp8tc_gemm ({GEMM_ENV}) must be one of {GEMMS}, got {self.gemm!r}")
        self.quant = str(target.options.get("fp8tc_quant") or os.environ.get(QUANT_ENV) or QUANTS[0]).lower()
        if self.quant not in QUANTS:
            raise ValueError(f"fp8tc_quant ({QUANT_ENV}) must be one of {QUANTS}, got {self.quant!r}")

    def mode(self, scheme):
        return NATIVE, self.summary

    def verified_for(self, device):
        if device.family == "sm90":
            return ("tested on an H200 (SM90), 2026-12-02: tests/backends/cuda/test_fp8tc_gpu.py -m gpu (both "
                    "activation quantizers' bytes vs the reference, both GEMMs vs their twins and the reference, NaN "
                    "blocks, CUDA graphs, torch.compile) and benchmarked")
        return CUDA_DOC

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if not ok:
            return ok, why
        if not self.enabled:
            return False, f"disabled (backend option mx_fp8tc='off' or {FP8TC_ENV}=0)"
        if scheme.dual_level:
            return False, "dual-scale level-0 factors are fp32 per 512-chunk, not foldable into a row scale"
        if act_dtype is not None and act_dtype not in (torch.bfloat16, torch.float16, torch.float32):
            return False, f"activation dtype {act_dtype} not supported"
        if self.gemm == "scaled_mm":
            if act_dtype is not None and act_dtype != torch.bfloat16:
                return False, (f"{str(act_dtype).replace('torch.', '')} activations need the Triton FP8 GEMM, not yet "
                               f"verified on the GPU (opt in: fp8tc_gemm='auto' or {GEMM_ENV}=auto)")
            if n is not None and n % 16:
                return False, f"N={n} is not a multiple of 16 (torch._scaled_mm rowwise; Triton GEMM: fp8tc_gemm='auto')"
        return True, ""

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        from .jit import twins

        if self.gemm == "scaled_mm" and self.torch_device.type != "cuda":
            raise KernelRefusal(f"torch._scaled_mm needs a CUDA device, not {self.dev} (Triton FP8 GEMM: fp8tc_gemm='auto')")
        base = super().prepare(scheme, tensors, act_dtype, n, k, where)
        wr, sw, exact = twins.rowwise_weight(base.weight, base.weight_scale, base.kp, scheme.weight_fmt)
        p = CudaMXFp8Prepared(**{f: getattr(base, f) for f in base.__dataclass_fields__})
        p.kernel = self
        p.wr, p.sw = wr.contiguous(), sw.contiguous()
        p.exact_rows = int(exact.sum())
        if self.quant == "v2":  # the default quantizer's plan, once per layer (chunk width, passes, rows per program)
            q2 = jit_module("fp8tc_quant2")
            p.q_plan = q2.rowwise_plan(p.kp, self._sm_count() or q2.DEFAULT_SMS)
            p.notes.append(f"{self.name}: activation quantizer v2; plan {p.q_plan.levels}")
        else:
            p.notes.append(f"{self.name}: activation quantizer v1 ({QUANT_ENV} / fp8tc_quant)")
        # M <= 16 goes to cuda.mx (for E4M3 weights its decode kernel was also faster, 2026-12-01 bench), except
        # FP4 weights with the Triton GEMM opted in ("auto" / "triton"), measured faster there
        fp4_decode = self.gemm != "scaled_mm" and scheme.weight_fmt.bits == 4
        p.min_m = int(self.min_m) if self.min_m is not None else (1 if fp4_decode else DECODE_M + 1)
        p.scaled_mm = self.gemm != "triton" and act_dtype == torch.bfloat16 and self._scaled_mm_ok(p)
        if self.gemm == "scaled_mm" and not p.scaled_mm:
            raise KernelRefusal(f"torch._scaled_mm rowwise is not available for N={n}, Kp={p.kp} here (and the "
                                f"Triton FP8 GEMM is opt-in: fp8tc_gemm='auto')")
        if p.scaled_mm:
            p.sw_row = p.sw.reshape(1, n).contiguous()
            p.bias_bf16 = None if p.bias is None else p.bias.to(torch.bfloat16)
            p.notes.append(f"{self.name}: M > {DECODE_M} runs torch._scaled_mm (rowwise, bf16 out); its bias is "
                           f"added as bf16 in the fp32 epilogue (bias rounded once to bf16)")
        if p.exact_rows < n:
            p.notes.append(f"{self.name}: {n - p.exact_rows} of {n} weight rows are not exact on the rowwise E4M3 "
                           f"grid (error below 2**-9 of the row's largest block scale; E2 contract)")
        return p

    def _sm_count(self) -> int | None:
        """SMs of the layer's device (the v2 quantizer's rows-per-program rule); None off CUDA."""
        if self.torch_device.type != "cuda":
            return None
        return int(torch.cuda.get_device_properties(self.torch_device).multi_processor_count)

    def _quant_rowwise(self, p, x2, write_mx: bool):
        """The layer's activation quantizer: (MX q bytes, codes, E4M3 bytes, row scales); fixed at prepare."""
        s = p.scheme
        if p.q_plan is not None:
            return jit_module("fp8tc_quant2").mx_quant_rowwise(
                x2, p.smooth, s.act_fmt, s.act_round_mode, s.act_scale_alg, p.kp, write_mx=write_mx,
                launch_opts=jit_module("ops")._launch_opts(), plan=p.q_plan)
        return jit_module("fp8tc").mx_quant_rowwise(x2, p.smooth, s.act_fmt, s.act_round_mode, s.act_scale_alg, p.kp,
                                                    write_mx=write_mx, launch_opts=jit_module("ops")._launch_opts())

    def _scaled_mm_ok(self, p) -> bool:
        """torch._scaled_mm rowwise on this (N, Kp)?  Probed once per shape at prepare time."""
        key = (p.n, p.kp, self.dev)
        if key not in _SCALED_MM_OK:
            ok = self.torch_device.type == "cuda" and p.n % 16 == 0 and p.kp % 16 == 0
            if ok:
                try:
                    a = torch.zeros((32, p.kp), dtype=torch.float8_e4m3fn, device=self.dev)
                    torch._scaled_mm(a, p.wr.view(torch.float8_e4m3fn).t(), scale_a=torch.ones(32, 1, device=self.dev),
                                     scale_b=p.sw.reshape(1, -1).nan_to_num(1.0), out_dtype=torch.bfloat16)
                except Exception:  # noqa: BLE001 - unsupported here: the Triton GEMM runs
                    ok = False
            _SCALED_MM_OK[key] = ok
        return _SCALED_MM_OK[key]

    def quantize_activation(self, p, x2):
        if x2.shape[0] < p.min_m:
            return super().quantize_activation(p, x2)
        q, codes, _, _ = self._quant_rowwise(p, x2, True)
        return self._storage(p, (q, codes, None))

    def _apply(self, p, x2, add_bias=True):
        if x2.shape[0] < p.min_m:
            return super()._apply(p, x2, add_bias)
        fp8tc, ops = jit_module("fp8tc"), jit_module("ops")  # imported once, not per call

        _, _, xr, sx = self._quant_rowwise(p, x2, False)
        if p.scaled_mm and x2.shape[0] > DECODE_M:
            return torch._scaled_mm(xr.view(torch.float8_e4m3fn), p.wr.view(torch.float8_e4m3fn).t(),
                                    scale_a=sx.view(-1, 1), scale_b=p.sw_row,
                                    bias=p.bias_bf16 if add_bias else None, out_dtype=torch.bfloat16)
        return fp8tc.fp8_rowwise_gemm(xr, sx, p.wr, p.sw, p.n, p.kp, p.act_dtype, bias=p.bias if add_bias else None,
                                      pick=ops._pick, m_bucket=ops.m_bucket, launch_opts=ops._launch_opts(),
                                      tuned=ops._TUNED)
