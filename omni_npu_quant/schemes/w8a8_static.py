"""W8A8 static (msModelSlim ``W8A8``; ``W8A8_MIX`` is served the same way): per-tensor asymmetric
int8 activations from calibration, int32 ``quant_bias`` and a ``deq_scale`` per output channel.

Forward: ``x_q = npu_quantize(x, act(1/input_scale), act(input_offset))``;
``acc = x_q @ W_q.T + quant_bias`` (int32); ``y = cast(fp32(acc) * deq)``, where ``deq`` is the
fp32 ``deq_scale`` for bf16/fp32 activations and its FP19 truncation for fp16 activations
(int64 ``deq_scale`` is decoded).  The float ``bias`` is already inside ``quant_bias``
(``bias_in_quant_bias``), so kernels never add it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import int8 as I
from .base import Scheme, SchemeValidationError, TensorSpec
from .registry import register_scheme

F32, I8, I32, I64 = torch.float32, torch.int8, torch.int32, torch.int64
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@register_scheme("W8A8_MIX")
@dataclass
class W8A8Static(Scheme):
    name = "w8a8_static"
    label = "W8A8"
    weight_bits = 8
    rows_independent = True
    order = 20
    needs_calibration = True
    in_main_job = True
    bias_in_quant_bias = True  # the float bias is folded into quant_bias at quantization time

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
        off = tensors["input_offset"].float()
        if not bool(torch.isfinite(off).all()) or bool(((off < -128) | (off > 127)).any()):
            raise SchemeValidationError(f"{loc}tensor 'input_offset' must be a finite int8 zero point in [-128, 127], "
                                        f"got {off.flatten().tolist()}")
        ds = I.deq_scale_fp32(tensors["deq_scale"])  # int64 bit patterns decoded
        if not bool(torch.isfinite(ds).all()):
            raise SchemeValidationError(f"{loc}tensor 'deq_scale' has non-finite values")
        live = (tensors["weight"] != 0).any(-1)
        bad = (ds < 0) | ((ds == 0) & live)
        if bool(bad.any()):
            raise SchemeValidationError(f"{loc}tensor 'deq_scale' must be > 0 (0 only for an all-zero weight row); "
                                        f"{ds[bad].flatten()[:4].tolist()} at rows {bad.nonzero().flatten()[:4].tolist()}")

    def quantize_weight(self, weight, bias=None, *, act_min=None, act_max=None, deq_scale_dtype=F32, model_dtype=None,
                        **calib):
        """Needs the activation range (``act_min``, ``act_max``) from calibration.  ``input_scale``, the weight
        scale and ``deq_scale`` are computed in ``model_dtype`` as msModelSlim does (default: the weight's dtype
        when bf16/fp16, else fp32; ``numerics.int8``); ``quant_bias`` from them in float64."""
        if act_min is None or act_max is None:
            raise ValueError("w8a8_static needs calibration: pass act_min= and act_max= (floats)")
        d = I.scale_dtype(model_dtype, weight)
        input_scale, input_offset = I.static_act_params(float(act_min), float(act_max), d)
        q, ws = I.quantize_weight_int8(weight, d)
        deq = I.static_deq_scale(input_scale, ws.squeeze(-1), d)
        rowsum = q.to(torch.float64).sum(-1)
        b = bias.to(torch.float64) if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
        qb = torch.round(b / deq.to(torch.float64) - rowsum * float(input_offset)).clamp(-2**31, 2**31 - 1).to(I32)
        return {
            "weight": q,
            "input_scale": torch.tensor([input_scale], dtype=F32),
            "input_offset": torch.tensor([input_offset], dtype=F32),
            "deq_scale": deq if deq_scale_dtype == F32 else I.deq_scale_to_int64(deq),
            "quant_bias": qb,
        }

    def dequantize_weight(self, tensors, k=None):
        ws = tensors.get("weight_scale")
        if ws is None:
            ws = (I.deq_scale_fp32(tensors["deq_scale"]) / tensors["input_scale"].float().reshape(-1)[0]).unsqueeze(-1)
        return tensors["weight"].to(F32) * ws.to(F32)
