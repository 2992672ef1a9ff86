"""MXFP8 W8A8 (msModelSlim ``W8A8_MXFP8``): E4M3 weights and activations, E8M0 scale per 32."""
from __future__ import annotations

from dataclasses import dataclass

from ..numerics import E4M3
from .mx_base import MXScheme
from .registry import register_scheme


@register_scheme()
@dataclass
class MXFP8(MXScheme):
    name = "mxfp8"
    label = "W8A8_MXFP8"
    weight_bits = 8
    order = 40
    in_main_job = True
    weight_fmt = E4M3
    act_fmt = E4M3
