"""int8 schemes: W8A8 dynamic (per-token activations), W8A8 static (per-tensor asymmetric
activations, msModelSlim ``deq_scale`` / ``quant_bias``), and W8A16 (weight-only)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import int8 as I
from .base import Scheme, SchemeValidationError, TensorSpec

F32, I8, I32, I64 = torch.float32, torch.int8, torch.int32, torch.int64
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _weight_scale_shape(tensors, n, k):
    ws = tensors.get("weight_scale")
    if ws is not None and ws.dim() == 2 and ws.shape[1] > 1:
        return (n, int(ws.shape[1]))
    return (n, 1)


def _group_size(k: int, groups: int) -> int:
    if groups <= 1:
        return k
    if k % groups:
        raise SchemeValidationError(f"per-group weight_scale with {groups} groups does not divide K={k}")
    return k // groups


@dataclass
class W8A8Dynamic(Scheme):
    name = "w8a8_dynamic"
    label = "W8A8_DYNAMIC"
    weight_bits = 8
    smooth_fused = True  # npu_dynamic_quant(smooth_scales=...)

    def tensor_specs(self, n, k, *, has_bias=False, groups: int = 1):
        return [
            TensorSpec("weight", (I8,), (n, k), input_dim=1, output_dim=0),
            TensorSpec("weight_scale", (F32, torch.bfloat16, torch.float16), (n, groups), input_dim=1 if groups > 1 else None, output_dim=0),
            TensorSpec("weight_offset", (F32, torch.bfloat16, torch.float16), (n, groups), input_dim=1 if groups > 1 else None,
                       output_dim=0, optional=True),
            TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True),
            TensorSpec("mul_scale", FLOATS, (k,), input_dim=0, optional=True),
        ]

    def specs_for(self, tensors, n, k):
        ws = tensors.get("weight_scale")
        groups = int(ws.shape[1]) if ws is not None and ws.dim() == 2 else 1
        return self.tensor_specs(n, k, has_bias="bias" in tensors, groups=groups)

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        _group_size(k, tensors["weight_scale"].shape[-1] if tensors["weight_scale"].dim() == 2 else 1)
        off = tensors.get("weight_offset")
        if off is not None and bool((off.float() != 0).any()):
            raise SchemeValidationError(f"{loc}tensor 'weight_offset' is non-zero: W8A8_DYNAMIC weights must be symmetric")

    def quantize_weight(self, weight, bias=None, **calib):
        q, s = I.quantize_weight_int8(weight)
        out = {"weight": q, "weight_scale": s, "weight_offset": torch.zeros_like(s)}
        if bias is not None:
            out["bias"] = bias.to(F32)
        return out

    def dequantize_weight(self, tensors, k=None):
        w = tensors["weight"]
        s = tensors["weight_scale"].to(F32)
        gs = _group_size(w.shape[1], s.shape[-1])
        return (w.to(F32).reshape(w.shape[0], -1, gs) * s.reshape(w.shape[0], -1, 1)).reshape(w.shape)


@dataclass
class W8A8Static(Scheme):
    """Static per-tensor asymmetric int8 activations (msModelSlim W8A8; W8A8_MIX is served this way).

    Forward: ``x_q = npu_quantize(x, act(1/input_scale), act(input_offset))``;
    ``acc = x_q @ W_q.T + quant_bias`` (int32); ``y = cast(fp32(acc) * deq)``, where ``deq`` is the
    fp32 ``deq_scale`` for bf16/fp32 activations and its FP19 truncation for fp16 activations
    (int64 ``deq_scale`` is decoded).  The float ``bias`` is already inside ``quant_bias``.
    """

    name = "w8a8_static"
    label = "W8A8"
    weight_bits = 8

    def tensor_specs(self, n, k, *, has_bias=False):
        return [
            TensorSpec("weight", (I8,), (n, k), input_dim=1, output_dim=0),
            TensorSpec("input_scale", FLOATS, (1,), per_tensor=True),
            TensorSpec("input_offset", FLOATS + (I8,), (1,), per_tensor=True),
            TensorSpec("deq_scale", (F32, I64), (n,), output_dim=0),
            TensorSpec("quant_bias", (I32,), (n,), output_dim=0),
            TensorSpec("weight_scale", FLOATS, (n, 1), output_dim=0, optional=True),
            TensorSpec("weight_offset", FLOATS, (n, 1), output_dim=0, optional=True),
            TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True, doc="ignored: folded into quant_bias"),
            TensorSpec("mul_scale", FLOATS, (k,), input_dim=0, optional=True),
        ]

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        s = tensors["input_scale"].float()
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise SchemeValidationError(f"{loc}tensor 'input_scale' must be finite and > 0, got {s.flatten().tolist()}")
        ds = deq_scale_fp32(tensors["deq_scale"])
        if not bool(torch.isfinite(ds).all()):
            raise SchemeValidationError(f"{loc}tensor 'deq_scale' has non-finite values")

    def quantize_weight(self, weight, bias=None, *, act_min=None, act_max=None, deq_scale_dtype=F32, **calib):
        """Needs the activation range (``act_min``, ``act_max``) from calibration."""
        if act_min is None or act_max is None:
            raise ValueError("w8a8_static needs calibration: pass act_min= and act_max= (floats)")
        input_scale, input_offset = static_act_params(float(act_min), float(act_max))
        q, ws = I.quantize_weight_int8(weight)
        deq = (input_scale * ws.squeeze(-1)).to(F32)
        rowsum = q.to(torch.float64).sum(-1)
        b = bias.to(torch.float64) if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
        qb = torch.round(b / deq.to(torch.float64) - rowsum * float(input_offset)).clamp(-2**31, 2**31 - 1).to(I32)
        out = {
            "weight": q,
            "input_scale": torch.tensor([input_scale], dtype=F32),
            "input_offset": torch.tensor([input_offset], dtype=F32),
            "deq_scale": deq if deq_scale_dtype == F32 else I.deq_scale_to_int64(deq),
            "quant_bias": qb,
        }
        return out

    def dequantize_weight(self, tensors, k=None):
        ws = tensors.get("weight_scale")
        if ws is None:
            ws = (deq_scale_fp32(tensors["deq_scale"]) / tensors["input_scale"].float().reshape(-1)[0]).unsqueeze(-1)
        return tensors["weight"].to(F32) * ws.to(F32)


def static_act_params(act_min: float, act_max: float) -> tuple[float, float]:
    """msModelSlim's asymmetric int8 activation parameters (signed zero point).

    ``scale = (max - min) / 255``; ``offset = round(-min / scale) - 128``; the range always
    contains 0.  Returns fp32-representable ``(input_scale, input_offset)``.
    """
    lo, hi = min(act_min, 0.0), max(act_max, 0.0)
    scale = (hi - lo) / 255.0
    if scale == 0.0:
        scale = 1.0
    scale = float(torch.tensor(scale, dtype=F32))
    offset = float(round(-lo / scale) - 128)
    offset = max(-128.0, min(127.0, offset))
    return scale, offset


def deq_scale_fp32(deq: torch.Tensor) -> torch.Tensor:
    """Full fp32 value of a ``deq_scale`` stored as fp32 or as msModelSlim's int64."""
    if deq.dtype == I64:
        return I.int64_deq_scale_to_fp32(deq)
    return deq.to(F32)


def effective_deq_scale(deq: torch.Tensor, act_dtype: torch.dtype) -> torch.Tensor:
    """The fp32 scale the NPU matmul applies: FP19-truncated for fp16 outputs, full otherwise."""
    full = deq_scale_fp32(deq)
    if act_dtype == torch.float16:
        return I.fp19_truncate(full)
    return full


@dataclass
class W8A16(Scheme):
    """Weight-only int8 (msModelSlim W8A16): ``y = x @ ((W_q - offset) * scale).T + bias``."""

    name = "w8a16"
    label = "W8A16"
    weight_bits = 8

    def tensor_specs(self, n, k, *, has_bias=False, groups: int = 1):
        return [
            TensorSpec("weight", (I8,), (n, k), input_dim=1, output_dim=0),
            TensorSpec("weight_scale", FLOATS, (n, groups), input_dim=1 if groups > 1 else None, output_dim=0),
            TensorSpec("weight_offset", FLOATS, (n, groups), input_dim=1 if groups > 1 else None, output_dim=0, optional=True),
            TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True),
            TensorSpec("mul_scale", FLOATS, (k,), input_dim=0, optional=True),
        ]

    specs_for = W8A8Dynamic.specs_for

    def quantize_weight(self, weight, bias=None, **calib):
        return W8A8Dynamic().quantize_weight(weight, bias)

    def dequantize_weight(self, tensors, k=None):
        w = tensors["weight"]
        s = tensors["weight_scale"].to(F32)
        off = tensors.get("weight_offset")
        gs = _group_size(w.shape[1], s.shape[-1])
        wq = w.to(F32).reshape(w.shape[0], -1, gs)
        if off is not None:
            wq = wq - off.to(F32).reshape(w.shape[0], -1, 1)
        return (wq * s.reshape(w.shape[0], -1, 1)).reshape(w.shape)
