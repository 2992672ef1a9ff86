"""Triton jit helpers that decode MX storage, shared by the GEMM kernels (``triton_kernels.py``), the
small-M decode kernel (``decode.py``) and the FP8-tensor-core path (``fp8tc.py``).

One definition each of: E8M0 code -> fp32 scale, 4-bit E2M1 code -> fp32 value, E4M3 byte -> fp32
value, E2M1 code -> E4M3 byte, and the E8M0 code that padding (masked rows, K padding) reads
(``numerics.constants.E8M0_PAD_CODE``).  The rules themselves are ``numerics.e8m0`` /
``numerics.elements``; these restate them in integer bit arithmetic (no libdevice, no FTZ exposure).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ....numerics.constants import E8M0_PAD_CODE

PAD_CODE = tl.constexpr(E8M0_PAD_CODE)


@triton.jit
def e8m0_scale(c):
    """E8M0 code (int32) -> fp32 2**(c-127); 255 -> NaN; 0 -> 2**-127 (fp32 subnormal bits)."""
    bits = tl.where(c == 0, 0x00400000, c << 23)
    bits = tl.where(c == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def e2m1_value(c):
    """4-bit E2M1 code (int32, sign in bit 3) -> exact fp32 value."""
    mag = c & 7
    ex = mag >> 1
    normal = ((ex + 126) << 23) | ((mag & 1) << 22)  # 2**(ex-1) * (1 + m/2) for ex >= 1
    bits = tl.where(ex == 0, tl.where(mag == 1, 0x3F000000, 0), normal)
    bits = bits | ((c & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def e4m3_value(b):
    """E4M3 byte (int32 0..255) -> exact fp32 value (0x7F / 0xFF are NaN)."""
    ex = (b >> 3) & 0xF
    man = b & 7
    normal = (((ex + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)
    v = tl.where(ex == 0, man.to(tl.float32) * 0.001953125, normal)
    v = tl.where((b & 0x7F) == 0x7F, float("nan"), v)
    return tl.where((b & 0x80) != 0, -v, v)


@triton.jit
def unpack_e2m1(p):
    """Packed bytes [.., n] (int32, two codes each, low nibble first) -> codes [.., 2n] (int32)."""
    return tl.interleave(p & 0xF, (p >> 4) & 0xF)
