"""E8M0 shared-scale rules (``scale_alg``) and the E8M0 codec.

An E8M0 code c (uint8) means 2**(c - 127) for c in [0, 254]; 255 is NaN; there is no zero.
Code 0 (2**-127) is also the padding value of MX scale tensors.

Scale rules (argument ``scale_alg`` of ``npu_dynamic_mx_quant``; no default here, the scheme sets it):

* 0 - OCP FLOOR: ``E = floor(log2 amax) - emax``, the exponent read from the fp32 exponent
  field (ops-nn ``quant/dynamic_mx_quant/tests/assets/golden.py`` ``_mx_calculate_share_exp``).
* 1 - FP8 round-up ("RCEIL"): ``S = fp32(amax / max)``; biased exponent Eb and mantissa Mb of S;
  ``Eb += 1`` if (0 < Eb < 254 and Mb > 0) or (Eb == 0 and Mb > 2**22)
  (golden ``_mx_calculate_share_exp_nv``).  The golden applies it to FP8 only; FP4 with
  ``scale_alg=1`` falls back to rule 0, as the golden does.
* 2 - FP4 "UOS" with ``dst_type_max`` (only partially documented, hicann/ops-nn PR #3145):
  for ``dst_type_max`` in {0, 6}: ceil instead of floor when amax/2**floor(log2 amax) > 1.5
  (block max would exceed 6 and saturate); for 7: when it exceeds 1.75; other values in
  [6, 12]: exponent of ``amax / dst_type_max`` rounded up.  See docs/numerics.md (ambiguity).

Every rule then applies: amax == 0 -> E = -127 (code 0); E < -127 -> -127; non-finite amax
(a NaN or Inf in the block) -> code 255 and every element of the block becomes 0.
"""
from __future__ import annotations

import torch

from .bits import exponent_field, pow2
from .constants import E8M0_BIAS, E8M0_MIN_EXP, E8M0_NAN, E2M1, ElemFormat

__all__ = ["shared_exponent", "exponent_to_code", "code_to_exponent", "exponent_to_scale", "decode_e8m0", "SCALE_ALGS"]

SCALE_ALGS = (0, 1, 2)


def _rceil_exponent(s: torch.Tensor) -> torch.Tensor:
    bits = s.to(torch.float32).contiguous().view(torch.int32)
    eb = (bits >> 23) & 0xFF
    mb = bits & 0x7FFFFF
    up = ((eb > 0) & (eb < 254) & (mb > 0)) | ((eb == 0) & (mb > (1 << 22)))
    return eb + up.to(torch.int32) - E8M0_BIAS


def shared_exponent(amax: torch.Tensor, fmt: ElemFormat, scale_alg: int, dst_type_max: float = 0.0) -> torch.Tensor:
    """Unbiased shared exponent (int32) per block from the block's fp32 |max|.

    Returns values in [-127, 127], or 128 as the marker of a NaN scale (non-finite amax or an
    exponent above 127).  ``exponent_to_code`` maps the marker to code 255.
    """
    if scale_alg not in SCALE_ALGS:
        raise ValueError(f"scale_alg must be one of {SCALE_ALGS}, got {scale_alg!r}")
    a = amax.to(torch.float32)
    if scale_alg == 1 and fmt.bits == 8:
        e = _rceil_exponent(a / fmt.max_value)
    elif scale_alg == 2:
        if fmt is not E2M1:
            raise ValueError("scale_alg=2 (UOS) is defined for FP4 E2M1 only")
        e = _uos_exponent(a, float(dst_type_max))
    else:
        e = exponent_field(a) - fmt.emax
    finite = torch.isfinite(a)
    e = torch.where(a == 0, torch.full_like(e, E8M0_MIN_EXP), e)
    e = e.clamp(min=E8M0_MIN_EXP)
    e = torch.where(finite & (e <= 127), e, torch.full_like(e, 128))
    return e


def _uos_exponent(a: torch.Tensor, dst_type_max: float) -> torch.Tensor:
    if dst_type_max in (0.0, 6.0, 7.0):
        floor_e = exponent_field(a)
        mant = a / pow2(floor_e.clamp(-127, 127))  # in [1, 2) for normal a
        thresh = 1.75 if dst_type_max == 7.0 else 1.5
        return floor_e + (mant > thresh).to(torch.int32) - E2M1.emax
    if not 6.0 <= dst_type_max <= 12.0:
        raise ValueError(f"dst_type_max must be 0, 6, 7 or within [6, 12] for scale_alg=2, got {dst_type_max}")
    return _rceil_exponent(a / dst_type_max)


def exponent_to_code(e: torch.Tensor) -> torch.Tensor:
    """Unbiased exponent (int32, 128 = NaN marker) -> E8M0 code (uint8)."""
    code = torch.where(e >= 128, torch.full_like(e, E8M0_NAN), e + E8M0_BIAS)
    return code.to(torch.uint8)


def code_to_exponent(code: torch.Tensor) -> torch.Tensor:
    """E8M0 code -> unbiased int32 exponent (255 -> 128, the NaN marker)."""
    return code.to(torch.int32) - E8M0_BIAS


def exponent_to_scale(e: torch.Tensor) -> torch.Tensor:
    """Unbiased int32 exponent (128 = the NaN marker) -> fp32 scale 2**e, NaN for the marker.
    The one NaN rule of E8M0 scales (``decode_e8m0`` and ``mx.mx_dequantize`` use it)."""
    s = pow2(e.clamp(max=127))
    return torch.where(e >= 128, torch.full_like(s, float("nan")), s)


def decode_e8m0(code: torch.Tensor) -> torch.Tensor:
    """E8M0 code (uint8) -> fp32 scale 2**(c-127); 255 -> NaN.  Exact (2**-127 is subnormal)."""
    return exponent_to_scale(code_to_exponent(code))
