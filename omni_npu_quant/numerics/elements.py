"""Element rounding of MX formats: a scaled fp32 value -> the nearest representable element.

Rule (ops-nn ``quant/dynamic_mx_quant/tests/assets/golden.py`` ``_mx_quantize_to_element_format``):
``pe = max(floor(log2|v|), emin)``; ``m = v / 2**pe * 2**mbits``; ``m`` rounded by ``round_mode``;
``q = clamp(m / 2**mbits * 2**pe, -max, max)``; NaN -> 0.  Every step but the rounding is an
exact power-of-two scaling in fp32.

Round modes: ``"rint"`` half to even; ``"round"`` half away from zero (``sign * floor(|m| + 0.5)``);
``"floor"`` toward -inf on the signed mantissa.
"""
from __future__ import annotations

import torch

from .bits import exponent_field, pow2
from .constants import ROUND_MODES, ElemFormat

__all__ = ["round_mantissa", "quantize_elements"]


def round_mantissa(m: torch.Tensor, round_mode: str) -> torch.Tensor:
    if round_mode == "rint":
        return torch.round(m)  # torch.round is round-half-to-even
    if round_mode == "round":
        return torch.copysign(torch.floor(m.abs() + 0.5), m)
    if round_mode == "floor":
        return torch.floor(m)
    raise ValueError(f"round_mode must be one of {ROUND_MODES}, got {round_mode!r}")


def quantize_elements(v: torch.Tensor, fmt: ElemFormat, round_mode: str) -> torch.Tensor:
    """fp32 values already divided by their block scale -> fp32 element values of ``fmt``.

    The result is exactly representable in ``fmt`` (sign of zero kept; NaN becomes +0).
    """
    v = v.to(torch.float32)
    pe = exponent_field(v).clamp(min=fmt.emin, max=127)
    step = pow2(pe - fmt.mbits)  # value of one mantissa ulp at this exponent
    m = round_mantissa(v / step, round_mode)
    q = (m * step).clamp(-fmt.max_value, fmt.max_value)
    q = torch.where(torch.isnan(q), torch.zeros_like(q), q)
    return q
