"""What the int8-weight schemes share (not a scheme itself): W8A8 dynamic and W8A16 store the same
tensors (int8 weight, per-channel or per-K-group scale and optional offset) and quantize weights alike."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import int8 as I
from .base import Scheme, SchemeValidationError, TensorSpec

F32, I8 = torch.float32, torch.int8
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def scale_groups(tensors) -> int:
    """Number of K-groups of a stored ``weight_scale`` ((N, 1) or (N,) = per channel)."""
    ws = tensors.get("weight_scale")
    return int(ws.shape[1]) if ws is not None and ws.dim() == 2 else 1


def check_group_count(k: int, groups: int, loc: str) -> int:
    try:
        return I.group_size_of(k, groups)
    except ValueError as e:
        raise SchemeValidationError(f"{loc}{e}") from None


def check_scale_values(tensors, loc: str, name: str = "weight_scale") -> None:
    """A weight scale must be finite and >= 0, and > 0 wherever its row/group of ``weight`` is non-zero
    (a zero scale there would silently zero the output; an all-zero row may have scale 0)."""
    ws = tensors[name].float()
    if not bool(torch.isfinite(ws).all()):
        bad = (~torch.isfinite(ws)).nonzero()[0].tolist()
        raise SchemeValidationError(f"{loc}tensor '{name}' has a non-finite value at {bad}")
    if bool((ws < 0).any()):
        raise SchemeValidationError(f"{loc}tensor '{name}' has a negative value at {(ws < 0).nonzero()[0].tolist()}")
    w = tensors["weight"]
    s = ws.reshape(w.shape[0], -1)
    if bool((s == 0).any()):
        live = (w.reshape(w.shape[0], s.shape[1], -1) != 0).any(-1)
        dead = (s == 0) & live
        if bool(dead.any()):
            raise SchemeValidationError(f"{loc}tensor '{name}' is 0 at {dead.nonzero()[0].tolist()} where the weight "
                                        "is non-zero (the output would silently be zeroed)")


def dequantize_grouped(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 ``(w - offset) * scale`` with per-channel or per-K-group scale (N, G)."""
    s = scale.to(F32).reshape(w.shape[0], -1)
    gs = I.group_size_of(w.shape[1], s.shape[-1])
    wq = w.to(F32).reshape(w.shape[0], -1, gs)
    if offset is not None:
        wq = wq - offset.to(F32).reshape(w.shape[0], -1, 1)
    return (wq * s.unsqueeze(-1)).reshape(w.shape)


@dataclass
class Int8WeightScheme(Scheme):
    """What W8A8 dynamic and W8A16 share: int8 (N, K) weights with an fp scale (and offset) per output
    channel or per K-group, the same stored tensors, the same online weight quantizer."""

    weight_bits = 8
    rows_independent = True
    per_group_scales = True
    row_amax_weight_scale = True

    def tensor_specs(self, n, k, *, has_bias=False, groups: int = 1):
        return [
            TensorSpec("weight", (I8,), (n, k), input_dim=1, output_dim=0),
            TensorSpec("weight_scale", FLOATS, (n, groups), input_dim=1 if groups > 1 else None, output_dim=0),
            TensorSpec("weight_offset", FLOATS, (n, groups), input_dim=1 if groups > 1 else None,
                       output_dim=0, optional=True),
            TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True),
            TensorSpec("mul_scale", FLOATS, (k,), input_dim=0, optional=True),
        ]

    def specs_for(self, tensors, n, k):
        return self.tensor_specs(n, k, has_bias="bias" in tensors, groups=scale_groups(tensors))

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        check_group_count(k, scale_groups(tensors), loc)
        check_scale_values(tensors, loc)

    def quantize_weight(self, weight, bias=None, *, model_dtype=None, **calib):
        """``model_dtype``: the dtype msModelSlim would compute the scale in (the model's; default: the weight's
        dtype when bf16/fp16, else fp32), so the fp32 ``weight_scale`` holds msModelSlim's values."""
        q, s = I.quantize_weight_int8(weight, model_dtype)
        out = {"weight": q, "weight_scale": s, "weight_offset": torch.zeros_like(s)}
        if bias is not None:
            out["bias"] = bias.to(F32)
        return out

    def dequantize_weight(self, tensors, k=None):
        return dequantize_grouped(tensors["weight"], tensors["weight_scale"], tensors.get("weight_offset"))
