"""MXFP8 W8A8 (msModelSlim ``W8A8_MXFP8``): E4M3 weights and activations, E8M0 scale per 32."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import E4M3
from .base import SchemeValidationError
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

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        b = tensors["weight"].view(torch.uint8)
        nan = (b & 0x7F) == 0x7F  # E4M3FN NaN codes 0x7F / 0xFF (no infinities in this format)
        if bool(nan.any()):
            raise SchemeValidationError(f"{loc}tensor 'weight' holds E4M3 NaN codes (0x7F/0xFF) at "
                                        f"{nan.nonzero()[0].tolist()}")
