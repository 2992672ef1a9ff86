"""Bit-level helpers on fp32 tensors: exponent field and exact powers of two.

Internal building blocks of the E8M0 and element rules; pure torch, any device.
"""
from __future__ import annotations

import torch

__all__ = ["exponent_field", "pow2"]


def exponent_field(x: torch.Tensor) -> torch.Tensor:
    """floor(log2|x|) read from the fp32 exponent field (int32).

    Normal numbers give their exact binary exponent.  Zero and fp32 subnormals give -127 (the
    field is 0), which every caller clamps to a larger minimum, so the result equals the
    golden's ``floor(log2(a))`` after clamping.  Inf/NaN give 128: callers test finiteness first.
    """
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    return ((bits >> 23) & 0xFF) - 127


def pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact fp32 2**e for integer e in [-127, 127] (2**-127 is the fp32 subnormal 2**-127)."""
    e = e.to(torch.int32)
    normal = ((e.clamp(min=-126) + 127) << 23).view(torch.float32)
    sub = torch.full_like(normal, 2.0 ** -127)
    return torch.where(e >= -126, normal, sub)

