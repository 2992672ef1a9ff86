"""W8A8 dynamic (msModelSlim ``W8A8_DYNAMIC``): int8 weights with a symmetric fp scale per output
channel (or per K-group), per-token dynamic int8 activations (``npu_dynamic_quant``), optional
``mul_scale`` fused into the activation quantizer (``smooth_scales``)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import SchemeValidationError
from .int8_base import (Int8WeightScheme, check_group_count, check_scale_values, dequantize_grouped,  # noqa: F401
                        scale_groups)
from .registry import register_scheme


@register_scheme()
@dataclass
class W8A8Dynamic(Int8WeightScheme):
    name = "w8a8_dynamic"
    label = "W8A8_DYNAMIC"
    order = 10
    in_main_job = True

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        off = tensors.get("weight_offset")
        if off is not None and bool((off.float() != 0).any()):
            raise SchemeValidationError(f"{loc}tensor 'weight_offset' is non-zero: W8A8_DYNAMIC weights must be symmetric")

    def dequantize_weight(self, tensors, k=None):
        return dequantize_grouped(tensors["weight"], tensors["weight_scale"])  # symmetric: the offset is zero
