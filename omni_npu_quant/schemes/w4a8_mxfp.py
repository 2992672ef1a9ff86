"""W4A8 MXFP (msModelSlim ``W4A8_MXFP``): packed FP4 E2M1 weights, E4M3 activations, E8M0 per 32."""
from __future__ import annotations

from dataclasses import dataclass

from ..numerics import E4M3
from .mx_base import MXScheme
from .registry import register_scheme


@register_scheme()
@dataclass
class W4A8MXFP(MXScheme):
    name = "w4a8_mxfp"
    label = "W4A8_MXFP"
    weight_bits = 4
    order = 60
    act_fmt = E4M3
