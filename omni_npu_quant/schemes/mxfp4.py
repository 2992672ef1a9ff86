"""MXFP4 W4A4 (msModelSlim ``W4A4_MXFP4``): packed FP4 E2M1 weights and activations, E8M0 scale
per 32.  Activations default to ``round`` (half away from zero), as vllm-ascend serves msModelSlim
W4A4_MXFP4."""
from __future__ import annotations

from dataclasses import dataclass

from .mx_base import MXScheme
from .registry import register_scheme


@register_scheme()
@dataclass
class MXFP4(MXScheme):
    name = "mxfp4"
    label = "W4A4_MXFP4"
    weight_bits = 4
    order = 50
    in_main_job = True
    act_round_mode: str = "round"
