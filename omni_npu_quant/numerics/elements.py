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

from .constants import ROUND_MODES, ElemFormat

__all__ = ["round_mantissa", "quantize_elements", "quantize_elements_"]


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
    return quantize_elements_(v.to(torch.float32, copy=True).contiguous(), fmt, round_mode)


def quantize_elements_(v: torch.Tensor, fmt: ElemFormat, round_mode: str, *, nan_to_zero: bool = True) -> torch.Tensor:
    """In-place ``quantize_elements`` on a contiguous fp32 tensor the caller owns (same result).

    The binade ``2**floor(log2|v|)`` is the fp32 pattern with the sign and mantissa masked off;
    clamping it to ``[2**emin, 2**127]`` gives ``2**pe`` (zero and fp32 subnormals read as 0 and
    take ``emin``, like the golden's ``max(floor(log2|v|), emin)``; Inf/NaN read as Inf and clamp
    to ``2**127``).  ``v / 2**(pe - mbits)`` is then the golden's ``v / 2**pe * 2**mbits`` bit for
    bit (division by a power of two in range is exact).  ``nan_to_zero=False`` skips the NaN -> 0
    pass for callers that know ``v`` has no NaN.
    """
    if round_mode not in ROUND_MODES:
        raise ValueError(f"round_mode must be one of {ROUND_MODES}, got {round_mode!r}")
    if v.dtype != torch.float32 or not v.is_contiguous():
        raise ValueError("quantize_elements_ needs a contiguous fp32 tensor")
    step = v.view(torch.int32).bitwise_and(0x7F800000).view(torch.float32)
    step.clamp_(min=2.0 ** fmt.emin, max=2.0 ** 127).mul_(2.0 ** -fmt.mbits)  # ulp 2**(pe - mbits), exact
    m = v.div_(step)
    if round_mode == "rint":
        m.round_()  # half to even
    elif round_mode == "round":
        # golden: floor(|m| + fp32(0.5)) with the sign put back (the fp32 add rounds, as there)
        mag = m.abs().add_(0.5).floor_()
        m = mag.copysign_(m)
    else:
        m.floor_()
    q = m.mul_(step).clamp_(-fmt.max_value, fmt.max_value)
    return q.nan_to_num_(nan=0.0) if nan_to_zero else q
