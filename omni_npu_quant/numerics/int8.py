"""int8 quantization rules (W8A8 dynamic and static) and the int64 dequant-scale encodings.

* ``dynamic_quant_int8``: per-row symmetric, exactly the A2 ``npu_dynamic_quant`` kernel
  (ops-nn ``quant/dynamic_quant/op_kernel``): ``inv = fp32(127 / amax)``,
  ``q = clamp(rint(fp32(x * inv)), -127, 127)``, ``scale = fp32(amax * fp32(1/127))``.
  All-zero rows: q = 0, scale = 0 (the hardware would produce 0 * inf = NaN; we define it).
  Non-finite rows: q = 0 where the product is NaN; the scale carries the Inf/NaN.
* ``quantize_weight_int8``: msModelSlim 26.1.0's symmetric per-channel weight rule, with the scale
  computed in the model dtype D (``calculate_int_qparam`` in ``msmodelslim/ir/api/impl/int_quantization.py``,
  run on D weights): ``scale = max(D(amax) / 127, D(fp32 eps))`` evaluated in D, stored as fp32 (so its value
  is exact in D: vllm-ascend loads it into a D parameter without rounding).  ``q = clamp(rint(fp32(w) /
  fp32(scale)), -128, 127)``; msModelSlim divides in D first (``int_quantize``), which moves ~8% of bf16
  (~1% of fp16) int8 weights by one step and raises the weight error ~6% for bf16: we divide in fp32.
* ``static_act_params``: msModelSlim's asymmetric per-tensor activation parameters, in D as well.
* ``static_quant_int8``: ``npu_quantize(div_mode=False)`` / AscendQuantV3:
  ``v = fp32(fp32(x) * fp32(scale)) + fp32(offset)``, ``q = clamp(rint(v), -128, 127)``.
* int64 ``deq_scale``: msModelSlim stores the fp32 bit pattern read as int32, sign-extended
  (``deq_scale_to_int64``); ``npu_trans_quant_param`` keeps bits & 0xFFFFE000 and sets bit 46
  (``trans_quant_param``); every NPU matmul reads low 32 bits & 0xFFFFE000 (``decode_deq_scale``).
"""
from __future__ import annotations

import torch

from .constants import FP19_MASK, INT8_MAX, INT8_MIN, INT8_QMAX, TRANS_QUANT_PARAM_FLAG_BIT

__all__ = [
    "dynamic_quant_int8", "quantize_weight_int8", "static_quant_int8", "dequantize_int8",
    "fp19_truncate", "deq_scale_to_int64", "trans_quant_param", "decode_deq_scale", "int64_deq_scale_to_fp32",
    "int8_matmul", "static_act_params", "static_deq_scale", "scale_dtype", "weight_scale_int8", "deq_scale_fp32",
    "effective_deq_scale", "static_act_operands", "group_size_of",
    "grouped_int8_matmul",
]

_INV_127 = torch.tensor(1.0 / INT8_QMAX, dtype=torch.float32)  # fp32(1/127)


def dynamic_quant_int8(x: torch.Tensor, smooth: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., K) float -> (int8 (..., K), fp32 scale (...,))."""
    xf = x.to(torch.float32)
    if smooth is not None:
        xf = xf * smooth.to(torch.float32)
    a = xf.abs().amax(dim=-1)
    zero = a == 0
    inv = torch.where(zero, torch.zeros_like(a), torch.tensor(float(INT8_QMAX), dtype=torch.float32, device=a.device) / a)
    p = xf * inv.unsqueeze(-1)
    p = torch.where(torch.isnan(p), torch.zeros_like(p), p)
    q = torch.round(p).clamp(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    scale = a * _INV_127.to(a.device)
    return q, scale


def scale_dtype(model_dtype: torch.dtype | None, weight: torch.Tensor | None = None) -> torch.dtype:
    """The dtype msModelSlim computes int8 scales in: the model dtype when it is bf16 or fp16 (``model_dtype``,
    else the weight's dtype), fp32 otherwise."""
    d = model_dtype if model_dtype is not None else (weight.dtype if weight is not None else torch.float32)
    return d if d in (torch.bfloat16, torch.float16) else torch.float32


def _eps(d: torch.dtype, device=None) -> torch.Tensor:
    # msModelSlim: torch.tensor([finfo(float32).eps]).type_as(min_val); 2**-23 is exact in bf16, fp16 (subnormal), fp32
    return torch.tensor([torch.finfo(torch.float32).eps], device=device).to(d)


def weight_scale_int8(amax: torch.Tensor, model_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Symmetric int8 scale of a row amax, msModelSlim's way: ``max(D(amax) / 127, D(eps))`` in D, as fp32."""
    d = scale_dtype(model_dtype, amax)
    a = amax.to(torch.float32).to(d)
    return torch.max(a / float(INT8_QMAX), _eps(d, a.device)).to(torch.float32)


def quantize_weight_int8(w: torch.Tensor, model_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> int8 (N, K) and fp32 per-channel scale (N, 1) whose values are msModelSlim's
    (computed in ``model_dtype``, default: the weight's dtype when bf16/fp16, else fp32); see the module doc."""
    wf = w.to(torch.float32)
    s = weight_scale_int8(wf.abs().amax(dim=-1), scale_dtype(model_dtype, w))
    p = wf / s.unsqueeze(-1)
    p = torch.where(torch.isnan(p), torch.zeros_like(p), p)
    q = torch.round(p).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
    return q, s.unsqueeze(-1)


def static_quant_int8(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """``npu_quantize(x, scale, offset, qint8, -1, div_mode=False)`` semantics.

    ``scale`` multiplies (it is the reciprocal of the checkpoint's ``input_scale``); both
    ``scale`` and ``offset`` broadcast over the last axis (size 1 or K).
    """
    v = x.to(torch.float32) * scale.to(torch.float32)
    if offset is not None:
        v = v + offset.to(torch.float32)
    v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
    return torch.round(v).clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``(q - offset) * scale`` in fp32 (msModelSlim's weight convention)."""
    v = q.to(torch.float32)
    if offset is not None:
        v = v - offset.to(torch.float32)
    return v * scale.to(torch.float32)


def fp19_truncate(s: torch.Tensor) -> torch.Tensor:
    """fp32 -> fp32 with the low 13 mantissa bits cleared (what the NPU matmul reads)."""
    bits = s.to(torch.float32).contiguous().view(torch.int32)
    return (bits & torch.tensor(FP19_MASK - (1 << 32), dtype=torch.int32)).view(torch.float32)


def deq_scale_to_int64(s: torch.Tensor) -> torch.Tensor:
    """msModelSlim's int64 form: the fp32 bit pattern as int32, widened (sign-extended)."""
    return s.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


def trans_quant_param(scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int = 0) -> torch.Tensor:
    """``npu_trans_quant_param``: fp32 -> int64 with FP19 bits, bit 46 set, optional 9-bit offset.

    ``round_mode=1`` rounds to 19 bits (unspecified upstream: we round half to even at bit 13).
    """
    bits = scale.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if round_mode == 1:
        low = bits & 0x1FFF
        keep = bits & FP19_MASK
        lsb = (keep >> 13) & 1
        up = (low > 0x1000) | ((low == 0x1000) & (lsb == 1))
        bits = (keep + (up.to(torch.int64) << 13)) & 0xFFFFFFFF
    elif round_mode == 0:
        bits = bits & FP19_MASK
    else:
        raise ValueError(f"round_mode must be 0 or 1, got {round_mode}")
    out = bits | (1 << TRANS_QUANT_PARAM_FLAG_BIT)
    if offset is not None:
        o = torch.round(offset.to(torch.float32)).clamp(-256, 255).to(torch.int64) & 0x1FF
        out = out | (o << 37)
    return out


def decode_deq_scale(v: torch.Tensor) -> torch.Tensor:
    """What the NPU matmul uses from an int64 scale: low 32 bits & 0xFFFFE000 as fp32."""
    low = (v.to(torch.int64) & FP19_MASK)
    low = torch.where(low >= (1 << 31), low - (1 << 32), low).to(torch.int32)
    return low.view(torch.float32)


def int64_deq_scale_to_fp32(v: torch.Tensor) -> torch.Tensor:
    """msModelSlim's int64 ``deq_scale`` -> its full fp32 value (no truncation)."""
    low = v.to(torch.int64) & 0xFFFFFFFF
    low = torch.where(low >= (1 << 31), low - (1 << 32), low).to(torch.int32)
    return low.view(torch.float32)


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ b_t.T`` for int8 a (..., K) and int8 b_t (N, K), on any device.

    float64 products and sums of int8 values are exact below 2**53, so this is bit-exact int32
    accumulation for every K a GEMM can have.
    """
    acc = torch.matmul(a.to(torch.float64), b_t.to(torch.float64).transpose(-1, -2))
    return acc.to(torch.int32)


# ---- static W8A8 parameters (msModelSlim W8A8) -------------------------------------------
def static_act_params(act_min: float, act_max: float, model_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """msModelSlim's asymmetric int8 activation parameters (signed zero point), computed in the model dtype D
    (bf16/fp16, else fp32) as ``calculate_int_qparam`` does on D activations: with ``lo = min(D(act_min), 0)``,
    ``hi = max(D(act_max), 0)``: ``scale = max(hi / 255 - lo / 255, D(eps))``, ``offset = rint(-lo / scale) - 128``,
    every step rounded to D.  Two deliberate differences: an all-zero range gives scale 1.0 (msModelSlim's eps
    would make ``1/input_scale`` overflow fp16), and the offset is clamped to int8 [-128, 127] (vllm-ascend
    loads it into an int8 parameter).  Returns ``(input_scale, input_offset)`` as Python floats (exact in D)."""
    d = scale_dtype(model_dtype)
    lo = torch.clamp(torch.tensor([float(act_min)], dtype=torch.float32).to(d), max=0.0)
    hi = torch.clamp(torch.tensor([float(act_max)], dtype=torch.float32).to(d), min=0.0)
    if float(hi[0]) == 0.0 and float(lo[0]) == 0.0:
        return 1.0, -128.0
    scale = torch.max(hi / 255 - lo / 255, _eps(d))
    offset = (-1 * lo / scale).round() + (-128)
    off = max(-128.0, min(127.0, float(offset[0])))
    return float(scale[0]), off


def static_deq_scale(input_scale: float, weight_scale: torch.Tensor,
                     model_dtype: torch.dtype | None = None) -> torch.Tensor:
    """msModelSlim's W8A8 ``deq_scale`` = ``input_scale * weight_scale`` evaluated in D (bf16/fp16, else fp32), as
    fp32 (the saver's ``deq_scale.to(float32)``; the int64 form for fp16 models is ``deq_scale_to_int64`` of it)."""
    d = scale_dtype(model_dtype)
    ws = weight_scale.to(torch.float32).to(d)
    return (torch.tensor([float(input_scale)], dtype=torch.float32, device=ws.device).to(d) * ws).to(torch.float32)


def deq_scale_fp32(deq: torch.Tensor) -> torch.Tensor:
    """Full fp32 value of a ``deq_scale`` stored as fp32 or as msModelSlim's int64."""
    if deq.dtype == torch.int64:
        return int64_deq_scale_to_fp32(deq)
    return deq.to(torch.float32)


def effective_deq_scale(deq: torch.Tensor, act_dtype: torch.dtype) -> torch.Tensor:
    """The fp32 scale the NPU matmul applies: FP19-truncated for fp16 outputs, full otherwise."""
    full = deq_scale_fp32(deq)
    if act_dtype == torch.float16:
        return fp19_truncate(full)
    return full


def static_act_operands(input_scale: torch.Tensor, input_offset: torch.Tensor,
                        act_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``npu_quantize`` is given for a static W8A8 layer: the reciprocal ``1/input_scale`` and
    the offset, both rounded to the activation dtype (shape (1,)).  Every kernel uses this."""
    recip = 1.0 / input_scale.to(torch.float32).reshape(-1)[:1]
    return recip.to(act_dtype), input_offset.to(torch.float32).reshape(-1)[:1].to(act_dtype)


def group_size_of(k: int, groups: int) -> int:
    """K per weight-scale group (``groups`` <= 1: per channel, the whole K)."""
    if groups <= 1:
        return k
    if k % groups:
        raise ValueError(f"per-group weight_scale with {groups} groups does not divide K={k}")
    return k // groups


def grouped_int8_matmul(q: torch.Tensor, weight_scale: torch.Tensor, group_size: int, group_matmul) -> torch.Tensor:
    """Per-group int8 GEMM with fp32 group scales: ``sum_g fp32(int32 acc_g) * weight_scale[:, g]``.

    ``group_matmul(g, q_g)`` returns the exact int32 (M, N) product of group ``g``; groups are
    summed in order in fp32 (the epilogue an NPU runs when it has no per-group int8 mode)."""
    acc = None
    for g in range(weight_scale.shape[-1]):
        part = group_matmul(g, q[:, g * group_size:(g + 1) * group_size]).to(torch.float32)
        part = part * weight_scale[:, g].to(torch.float32).reshape(1, -1)
        acc = part if acc is None else acc + part
    return acc
