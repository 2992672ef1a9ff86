"""FP4 E2M1 codec and nibble packing.

Nibble: bit 3 = sign, bits 0-2 index |v| in {0, 0.5, 1, 1.5, 2, 3, 4, 6} (code 8 = -0).
Packing along the last axis: element 2j in the low nibble, 2j+1 in the high nibble
(msModelSlim ``pack_fp4_to_uint8``, op-plugin ``pack_b4_to_b8``, vllm-ascend unpack).
"""
from __future__ import annotations

import torch

from .constants import FP4_E2M1_VALUES

__all__ = ["encode_e2m1", "decode_e2m1", "pack_fp4", "unpack_fp4", "E2M1_TABLE"]

# code -> value for all 16 codes (fp32)
E2M1_TABLE = torch.tensor(list(FP4_E2M1_VALUES) + [-v for v in FP4_E2M1_VALUES], dtype=torch.float32)


def _build_encode_lut() -> torch.Tensor:
    """uint8 code for each upper 16-bit half of an fp32 (sign, exponent, 7 mantissa bits); 255 = not E2M1.

    Every E2M1 value is exact in those 16 bits (its low 16 bits are zero), so the upper half alone
    identifies the code."""
    lut = torch.full((1 << 16,), 255, dtype=torch.uint8)
    hi = (E2M1_TABLE.contiguous().view(torch.int32) >> 16) & 0xFFFF
    lut[hi.long()] = torch.arange(16, dtype=torch.uint8)
    return lut


_ENCODE_LUT = _build_encode_lut()


def encode_e2m1(values: torch.Tensor) -> torch.Tensor:
    """Exact E2M1 values (fp32) -> uint8 codes 0..15.  Raises on a value E2M1 cannot hold.

    A table lookup on the upper 16 bits of the fp32 pattern (``_build_encode_lut``); a value is
    accepted only if its lower 16 bits are zero and the table has a code for the upper half.
    """
    bits = values.to(torch.float32).contiguous().view(torch.int32)
    hi = torch.bitwise_right_shift(bits, 16).bitwise_and_(0xFFFF).long()
    codes = torch.take(_ENCODE_LUT.to(bits.device), hi)
    del hi
    if bool((codes == 255).any()) or bool(torch.any(bits.bitwise_and(0xFFFF))):
        bad = (codes == 255) | (bits.bitwise_and(0xFFFF) != 0)
        bad_vals = values.to(torch.float32)[bad].flatten()[:4].tolist()
        raise ValueError(f"encode_e2m1: values not representable in FP4 E2M1: {bad_vals}")
    return codes


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 -> fp32 values."""
    return E2M1_TABLE.to(codes.device)[(codes & 0xF).long()]


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., K) -> packed uint8 (..., ceil(K/2)); an odd K is padded with code 0."""
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    lo = codes[..., 0::2] & 0xF
    hi = codes[..., 1::2] & 0xF
    return (lo | (hi << 4)).to(torch.uint8)


def unpack_fp4(packed: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """packed uint8 (..., K/2) -> codes (..., K) (cropped to ``k`` when given)."""
    lo = packed & 0xF
    hi = (packed >> 4) & 0xF
    codes = torch.stack([lo, hi], dim=-1).flatten(-2)
    if k is not None:
        if k > codes.shape[-1]:
            raise ValueError(f"unpack_fp4: k={k} exceeds the {codes.shape[-1]} packed elements")
        codes = codes[..., :k]
    return codes
