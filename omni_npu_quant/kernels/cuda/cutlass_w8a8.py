"""vLLM's compiled CUTLASS int8 GEMM (``vllm._custom_ops.cutlass_scaled_mm`` / ``cutlass_scaled_mm_azp``,
the int8 path of vLLM's own W8A8 layers) as kernel entries for W8A8 dynamic and static.

The activation quantizer is ours (the fused Triton int8 quantizer of ``cuda.int8_dynamic`` /
``cuda.int8_static``, bit-identical to ``numerics.int8``; vLLM's ``scaled_int8_quant`` is not used), then
vLLM's SM90 CUTLASS int8 GEMM (exact int32 accumulation) with its fused epilogue
(vllm-project/vllm, csrc/cutlass_extensions/epilogue/scaled_mm_epilogues_c3x.hpp):

* ``cuda.cutlass_w8a8`` (w8a8_dynamic, per-channel weight scales): ``cutlass_scaled_mm(x_q, w.t(), sx (M,1),
  ws (N,1), out_dtype, bias)``; epilogue ``D = fma(sx, ws * fp32(acc), bias)`` in fp32, rounded once to the
  output dtype (``ScaledEpilogueBias``; ``ScaledEpilogue`` without a bias: ``sx * (ws * fp32(acc))``).  Our
  reference computes ``(fp32(acc) * ws) * sx (+ bias)`` in fp32 and rounds once.  Without a bias the two
  are the same operations in the same order: bit-identical (E0).  With a bias, CUTLASS reads it in the
  output dtype (rounded once from fp32 at prepare) and fuses the multiply-add (one rounding instead of
  two): E2, a difference of at most about one output ulp plus the bias rounding (exact when the bias is
  representable in the output dtype).
* ``cuda.cutlass_w8a8_static`` (w8a8_static): ``cutlass_scaled_mm_azp(x_q, w.t(), 1.0, deq (N,),
  out_dtype, azp_adj=-quant_bias (1,N) int32)`` with the per-tensor azp epilogue
  (``ScaledEpilogueBiasAzp``): ``D = fma(1, deq * fp32(acc - azp_adj), 0)``, i.e. the int32 sum
  ``acc + quant_bias`` (exact, wrapping as ours), one conversion, one fp32 multiply by deq, one rounding:
  the reference's ``fp32(acc + quant_bias) * deq``, bit-identical (E0).

Chosen by measured speed: ``PREFERENCE[(family, scheme)]`` lists ``(m_max, "cutlass" | "triton")`` ranges
filled from ``tools/bench_linear.py`` rows (``w8a8_dynamic[cuda.cutlass_w8a8]`` vs ``w8a8_dynamic``).  In
the default mode ("auto", backend option ``cutlass`` or ``OMNI_NPU_QUANT_CUDA_CUTLASS``) the entries are
offered only where the table has a CUTLASS range, and M outside those ranges runs our Triton int8 GEMM
(same quantizer).  The table is empty: no GPU with vLLM's CUDA ops has run them yet, so by default they
refuse and ``cuda.int8_dynamic`` / ``cuda.int8_static`` run.  "on" uses CUTLASS at every M (benchmarks,
tests), "off" refuses.  Untested on a GPU (see ``verified``); docs/cuda.md, section "CUTLASS".
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

import torch

from ..base import NATIVE, KernelRefusal
from ..registry import register_kernel
from .common import UNTESTED
from .int8 import CudaInt8Dynamic, CudaInt8Prepared, CudaInt8Static

CUTLASS_ENV = "OMNI_NPU_QUANT_CUDA_CUTLASS"
MODES = ("auto", "on", "off")
# (family, scheme) -> ((m_max inclusive or None for any larger M, "cutlass" | "triton"), ...), ascending m_max.
# Filled only from a measured benchmark run (docs/cuda.md, "CUTLASS"); empty until one has run.
PREFERENCE: dict[tuple[str, str], tuple[tuple[int | None, str], ...]] = {}
INT32_MIN = -(2 ** 31)
_PROBE: dict[str, tuple[object | None, str]] = {}


def _op_loaded(name: str) -> bool:
    """Whether vLLM's compiled op ``torch.ops._C.<name>`` is registered (``vllm._C_stable_libtorch`` loaded)."""
    try:
        return hasattr(torch.ops._C, name)
    except Exception:  # noqa: BLE001
        return False


def vllm_ops(op: str):
    """-> (``vllm._custom_ops`` module or None, why not).  Probed once per op name."""
    if op not in _PROBE:
        try:
            mod = importlib.import_module("vllm._custom_ops")
        except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
            _PROBE[op] = (None, f"vllm._custom_ops does not import ({type(e).__name__}: {str(e)[:120]})")
        else:
            if not callable(getattr(mod, op, None)):
                _PROBE[op] = (None, f"vllm._custom_ops has no {op} (this vLLM version's Python API differs)")
            elif not _op_loaded(op):
                _PROBE[op] = (None, f"vllm._custom_ops imports but vLLM's compiled CUDA ops are not loaded "
                                    f"(torch.ops._C.{op} missing: vllm._C_stable_libtorch did not load)")
            else:
                _PROBE[op] = (mod, "")
    return _PROBE[op]


def choice(family: str | None, scheme: str, m: int, mode: str = "auto") -> str:
    """"cutlass" or "triton" for an M-row call (mode "on": always CUTLASS)."""
    if mode == "on":
        return "cutlass"
    for m_max, which in PREFERENCE.get((family, scheme), ()):
        if m_max is None or m <= m_max:
            return which
    return "triton"


@dataclass
class CutlassInt8Prepared(CudaInt8Prepared):
    weight_t: torch.Tensor | None = None  # (K, N) column-major view of the int8 (N, K) weight (no copy)
    scale_b: torch.Tensor | None = None  # fp32: dynamic ws (N, 1); static deq (N,)
    scale_a: torch.Tensor | None = None  # static: fp32 (1, 1) ones
    bias_out: torch.Tensor | None = None  # dynamic: bias in the output dtype (N,)
    azp_adj: torch.Tensor | None = None  # static: -quant_bias, int32 (1, N)
    azp_zero: torch.Tensor | None = None  # static, add_bias=False: zeros int32 (1, N)


class _CutlassMixin:
    """What both entries share: family, mode, preference, alignment and the vLLM probe."""

    families = ("sm90",)
    op_name = ""

    @classmethod
    def family_refusal(cls, family):
        if family == "sm100":
            return "vLLM's CUTLASS int8 GEMM does not support cc >= 10.0 (SM100); the Triton int8 kernels run"
        return (f"{cls.name}: only vLLM's SM90 (c3x) epilogue was read and mapped onto our reference, not "
                f"{family}'s")

    @classmethod
    def is_supported(cls, device):
        ok, why = super().is_supported(device)
        if not ok or not device.probed:  # a named profile: the packages are looked at on a real device only
            return ok, why
        if device.interpreted and "vllm._custom_ops" not in sys.modules:
            return False, "Triton interpreter on the CPU: vLLM's compiled CUDA ops need a GPU"
        ops, why = vllm_ops(cls.op_name)
        return (ops is not None), why

    @property
    def cutlass_mode(self) -> str:
        mode = str(self.target.options.get("cutlass") or os.environ.get(CUTLASS_ENV, "auto")).lower()
        if mode not in MODES:
            raise ValueError(f"cutlass ({CUTLASS_ENV}) must be one of {MODES}, got {mode!r}")
        return mode

    def verified_for(self, device):
        return UNTESTED

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if not ok:
            return ok, why
        mode, fam = self.cutlass_mode, self.target.device.family
        if mode == "off":
            return False, f"disabled (backend option cutlass='off' or {CUTLASS_ENV}=off)"
        if mode == "auto" and not any(w == "cutlass" for _, w in PREFERENCE.get((fam, scheme.name), ())):
            return False, (f"no measured speed advantage over the Triton int8 kernel recorded for {fam}/{scheme.name} "
                           f"(PREFERENCE in {__name__}); backend option cutlass='on' or {CUTLASS_ENV}=on runs it")
        if act_dtype is not None and act_dtype not in (torch.bfloat16, torch.float16):
            return False, f"cutlass_scaled_mm writes bf16 / fp16 only, not {str(act_dtype).replace('torch.', '')}"
        if n is not None and k is not None and (n % 16 or k % 16):
            return False, (f"N={n}, K={k}: vLLM's CUTLASS int8 GEMM needs N and K multiples of 16 (vLLM itself "
                           f"falls back to a Triton GEMM there)")
        return True, ""

    def _ops(self):
        ops, why = vllm_ops(self.op_name)
        if ops is None:  # only reached when the kernel is constructed by hand on a device is_supported refused
            raise RuntimeError(f"{self.name}: {why}")
        return ops

    def _base_fields(self, base):
        p = CutlassInt8Prepared(**{f: getattr(base, f) for f in base.__dataclass_fields__})
        p.kernel = self
        p.weight_t = p.weight.t()  # (K, N), stride (1, K): the column-major B that CUTLASS reads
        return p


@register_kernel(5)
class CudaCutlassW8A8(_CutlassMixin, CudaInt8Dynamic):
    name = "cuda.cutlass_w8a8"
    schemes = ("w8a8_dynamic",)
    op_name = "cutlass_scaled_mm"
    summary = ("our fused Triton int8 quantizer + vLLM's compiled CUTLASS int8 GEMM (cutlass_scaled_mm, fused "
               "fma(sx, ws * acc, bias) epilogue); E0 without bias, E2 with bias (bf16 bias, fused multiply-add)")

    def mode(self, scheme):
        return NATIVE, self.summary

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        base = super().prepare(scheme, tensors, act_dtype, n, k, where)
        if base.weight_scale.shape[1] != 1:
            raise KernelRefusal(f"{base.weight_scale.shape[1]} weight-scale groups: cutlass_scaled_mm takes per-channel "
                                f"(or per-tensor) weight scales only")
        p = self._base_fields(base)
        p.scale_b = p.weight_scale.reshape(n, 1).contiguous()
        if p.bias is not None:
            p.bias_out = p.bias.to(act_dtype).contiguous()
            if not torch.equal(p.bias_out.float(), p.bias):
                p.notes.append(f"{self.name}: the bias is read in {str(act_dtype).replace('torch.', '')} by the CUTLASS "
                               f"epilogue (rounded once from fp32; E2)")
        return p

    def _apply(self, p, x2, add_bias=True):
        if choice(self.target.device.family, p.scheme.name, x2.shape[0], self.cutlass_mode) != "cutlass":
            return super()._apply(p, x2, add_bias)
        qa = self.quantize_activation(p, x2)
        return self._ops().cutlass_scaled_mm(qa["x_q"], p.weight_t, qa["x_scale"].reshape(-1, 1), p.scale_b,
                                             p.act_dtype, p.bias_out if add_bias else None)


@register_kernel(6)
class CudaCutlassW8A8Static(_CutlassMixin, CudaInt8Static):
    name = "cuda.cutlass_w8a8_static"
    schemes = ("w8a8_static",)
    op_name = "cutlass_scaled_mm_azp"
    summary = ("our fused Triton static int8 quantizer + vLLM's compiled CUTLASS int8 GEMM with the per-tensor azp "
               "epilogue (azp_adj = -quant_bias: deq * fp32(acc + quant_bias)); E0")

    def mode(self, scheme):
        return NATIVE, self.summary

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        base = super().prepare(scheme, tensors, act_dtype, n, k, where)
        if bool((base.quant_bias == INT32_MIN).any()):
            raise KernelRefusal("quant_bias holds -2**31, whose negation (the azp_adj CUTLASS subtracts) overflows int32")
        p = self._base_fields(base)
        p.scale_b = p.deq.reshape(-1).to(torch.float32).contiguous()
        p.scale_a = torch.ones((1, 1), dtype=torch.float32, device=self.dev)
        p.azp_adj = (-p.quant_bias).reshape(1, n).contiguous()
        p.azp_zero = torch.zeros_like(p.azp_adj)
        return p

    def _apply(self, p, x2, add_bias=True):
        if choice(self.target.device.family, p.scheme.name, x2.shape[0], self.cutlass_mode) != "cutlass":
            return super()._apply(p, x2, add_bias)
        q = self.quantize_activation(p, x2)["x_q"]
        return self._ops().cutlass_scaled_mm_azp(q, p.weight_t, p.scale_a, p.scale_b, p.act_dtype,
                                                 p.azp_adj if add_bias else p.azp_zero, None, None)
