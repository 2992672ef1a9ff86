"""W8A16 (msModelSlim ``W8A16``): weight-only int8, ``y = x @ ((W_q - offset) * scale).T + bias``
with a scale (and optional offset) per output channel or per K-group; activations stay float."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SchemeValidationError
from .int8_base import Int8WeightScheme
from .registry import register_scheme


@register_scheme()
@dataclass
class W8A16(Int8WeightScheme):
    name = "w8a16"
    label = "W8A16"
    order = 30
    weight_only = True

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)  # group count and scale values
        off = tensors.get("weight_offset")
        if off is not None and not bool(torch.isfinite(off.float()).all()):
            bad = (~torch.isfinite(off.float())).nonzero()[0].tolist()
            raise SchemeValidationError(f"{loc}tensor 'weight_offset' has a non-finite value at {bad}")
