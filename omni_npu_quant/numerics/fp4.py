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


def encode_e2m1(values: torch.Tensor) -> torch.Tensor:
    """Exact E2M1 values (fp32) -> uint8 codes 0..15.  Raises on a value E2M1 cannot hold.

    Read from the fp32 bits: a representable magnitude is 0, 0.5 (bits 0x3F000000) or
    2**e * {1, 1.5} with e in {0, 1, 2}; its 3-bit code is 2 * (e + 1) + (top mantissa bit),
    0.5 -> 1, 0 -> 0; the sign bit becomes bit 3.
    """
    bits = values.to(torch.float32).contiguous().view(torch.int32)
    mag = bits & 0x7FFFFFFF
    e = torch.bitwise_right_shift(mag, 22)  # biased exponent (8 bits) and the top mantissa bit
    half = mag == 0x3F000000
    ok = ((mag & 0x3FFFFF) == 0) & (((e >= 254) & (e <= 259)) | half | (mag == 0))
    if not bool(ok.all()):
        bad = values.to(torch.float32)[~ok].flatten()[:4].tolist()
        raise ValueError(f"encode_e2m1: values not representable in FP4 E2M1: {bad}")
    # e = 2 * biased_exp + m1; 1.0 has biased exponent 127 -> e = 254 -> code 2
    code = e.sub_(252).clamp_(min=0)
    code.masked_fill_(half, 1)
    code.bitwise_or_(torch.bitwise_right_shift(bits, 28) & 8)  # sign (arithmetic shift keeps it)
    return code.to(torch.uint8)


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
