"""W8A16 (msModelSlim ``W8A16``): weight-only int8, ``y = x @ ((W_q - offset) * scale).T + bias``
with a scale (and optional offset) per output channel or per K-group; activations stay float."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import int8 as I
from .base import Scheme, SchemeValidationError, TensorSpec
from .registry import register_scheme
from .w8a8_dynamic import check_group_count, check_scale_values, dequantize_grouped, scale_groups

F32, I8 = torch.float32, torch.int8
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@register_scheme()
@dataclass
class W8A16(Scheme):
    name = "w8a16"
    label = "W8A16"
    weight_bits = 8
    rows_independent = True
    per_group_scales = True
    row_amax_weight_scale = True
    order = 30
    weight_only = True

    def tensor_specs(self, n, k, *, has_bias=False, groups: int = 1):
        return [
            TensorSpec("weight", (I8,), (n, k), input_dim=1, output_dim=0),
            TensorSpec("weight_scale", FLOATS, (n, groups), input_dim=1 if groups > 1 else None, output_dim=0),
            TensorSpec("weight_offset", FLOATS, (n, groups), input_dim=1 if groups > 1 else None, output_dim=0,
                       optional=True),
            TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True),
            TensorSpec("mul_scale", FLOATS, (k,), input_dim=0, optional=True),
        ]

    def specs_for(self, tensors, n, k):
        return self.tensor_specs(n, k, has_bias="bias" in tensors, groups=scale_groups(tensors))

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        check_group_count(k, scale_groups(tensors), loc)
        check_scale_values(tensors, loc)
        off = tensors.get("weight_offset")
        if off is not None and not bool(torch.isfinite(off.float()).all()):
            bad = (~torch.isfinite(off.float())).nonzero()[0].tolist()
            raise SchemeValidationError(f"{loc}tensor 'weight_offset' has a non-finite value at {bad}")

    def quantize_weight(self, weight, bias=None, **calib):
        q, s = I.quantize_weight_int8(weight)
        out = {"weight": q, "weight_scale": s, "weight_offset": torch.zeros_like(s)}
        if bias is not None:
            out["bias"] = bias.to(F32)
        return out

    def dequantize_weight(self, tensors, k=None):
        return dequantize_grouped(tensors["weight"], tensors["weight_scale"], tensors.get("weight_offset"))
