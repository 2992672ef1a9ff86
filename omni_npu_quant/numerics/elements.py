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


def quantize_elements_(v: torch.Tensor, fmt: ElemFormat, round_mode: str) -> torch.Tensor:
    """In-place ``quantize_elements`` on a contiguous fp32 tensor the caller owns (same result).

    Implementation of the rule above with exact power-of-two factors built from exponent bits:
    ``pe`` is the biased exponent field clamped to [emin + 127, 254] (zero and fp32 subnormals
    have field 0, so they take ``emin`` like the golden's ``max(floor(log2|v|), emin)``); the
    mantissa ulp ``2**(pe - mbits)`` and its inverse are normal fp32 numbers for every format, so
    ``v * 2**(mbits - pe)`` equals the golden's ``v / 2**pe * 2**mbits`` bit for bit.
    """
    if round_mode not in ROUND_MODES:
        raise ValueError(f"round_mode must be one of {ROUND_MODES}, got {round_mode!r}")
    if v.dtype != torch.float32 or not v.is_contiguous():
        raise ValueError("quantize_elements_ needs a contiguous fp32 tensor")
    eb = torch.bitwise_right_shift(v.view(torch.int32), 23)
    eb.bitwise_and_(0xFF).clamp_(min=fmt.emin + 127, max=254)
    inv = torch.sub(254 + fmt.mbits, eb).bitwise_left_shift_(23).view(torch.float32)  # 2**(mbits - pe)
    step = eb.sub_(fmt.mbits).bitwise_left_shift_(23).view(torch.float32)  # 2**(pe - mbits)
    m = v.mul_(inv)
    del inv
    if round_mode == "rint":
        m.round_()  # half to even
    elif round_mode == "round":
        # golden: floor(|m| + fp32(0.5)) with the sign put back (the fp32 add rounds, as there)
        mag = m.abs().add_(0.5).floor_()
        m = mag.copysign_(m)
    else:
        m.floor_()
    q = m.mul_(step).clamp_(-fmt.max_value, fmt.max_value)
    return q.nan_to_num_(nan=0.0)
