"""MX block quantization (OCP Microscaling): shared E8M0 exponent per block + element rounding.

Public functions (inverse pairs side by side):

* ``mx_quantize(x, fmt, round_mode, scale_alg, ...)`` -> ``MXResult(values, exponents)``: exact
  element values (fp32, shape of ``x``) and unbiased block exponents (int32, 128 = NaN scale).
* ``mx_dequantize(values, exponents, block, axis)`` -> fp32, exact.
* ``to_scale_pairs`` / ``from_scale_pairs``: E8M0 codes in the op layout (..., ceil(nb/2), 2)
  (axis -1), padded with code 0; for another axis the pair holds two consecutive blocks along
  that axis: (ceil(nb/2), N, 2) for axis -2 of a (K, N) tensor.
* ``mx_encode`` / ``mx_decode``: storage form (FP8 -> float8_e4m3fn (..., K); FP4 -> packed uint8
  (..., ceil(K/2))) with E8M0 codes (..., nb).

The rule follows ops-nn ``quant/dynamic_mx_quant/tests/assets/golden.py`` ``_mx_quantize``:
pad the axis with zeros to a multiple of ``block``, ``amax`` per block, shared exponent by
``scale_alg`` (see ``e8m0``), ``v = x / 2**E`` (exact), element rounding (see ``elements``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .bits import pow2
from .constants import E2M1, E4M3, E5M2, E8M0_PAD_CODE, MX_BLOCK, ElemFormat
from .e8m0 import code_to_exponent, exponent_to_code, exponent_to_scale, shared_exponent
from .elements import quantize_elements_
from .fp4 import decode_e2m1, encode_e2m1, pack_fp4, unpack_fp4
from .fp8 import decode_e4m3, encode_e4m3

__all__ = [
    "MXResult", "mx_quantize", "mx_dequantize", "to_scale_pairs", "from_scale_pairs",
    "mx_encode", "mx_decode", "num_blocks", "block_view",
]


class MXResult(NamedTuple):
    values: torch.Tensor  # fp32 exact element values, same shape as the input
    exponents: torch.Tensor  # int32 (..., nb) along the quantized axis; 128 marks a NaN scale

    @property
    def codes(self) -> torch.Tensor:
        return exponent_to_code(self.exponents)


def num_blocks(k: int, block: int = MX_BLOCK) -> int:
    return -(-k // block)


def block_view(x: torch.Tensor, block: int) -> torch.Tensor:
    """(..., K) -> (..., nb, block), zero-padded along K."""
    k = x.shape[-1]
    pad = num_blocks(k, block) * block - k
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)


def mx_quantize(
    x: torch.Tensor,
    fmt: ElemFormat,
    round_mode: str,
    scale_alg: int,
    *,
    block: int = MX_BLOCK,
    axis: int = -1,
    dst_type_max: float = 0.0,
) -> MXResult:
    if fmt not in (E4M3, E5M2, E2M1):
        raise ValueError(f"unsupported MX element format {fmt}")
    if fmt.bits == 8 and round_mode != "rint":
        raise ValueError(f"FP8 MX quantization supports round_mode='rint' only, got {round_mode!r}")
    if block <= 0 or block % 32:
        raise ValueError(f"block must be a positive multiple of 32, got {block}")
    xt = x.movedim(axis, -1).to(torch.float32)
    k = xt.shape[-1]
    blocks = block_view(xt, block)
    lo, hi = torch.aminmax(blocks, dim=-1)  # |max| without a full-size abs() copy; NaN propagates
    amax = torch.maximum(lo.neg_(), hi).abs_()  # abs_: max(-0.0, 0.0) may be -0.0
    e = shared_exponent(amax, fmt, scale_alg, dst_type_max)
    nan_scale = e >= 128
    inv_scale = pow2(e.clamp(max=127).neg_())  # 2**-E is exact for E in [-127, 127]: x * 2**-E == x / 2**E
    v = torch.mul(blocks, inv_scale.unsqueeze(-1)).contiguous()
    # v is finite outside NaN-scale blocks (|x| <= amax and 2**-E keeps amax below 2**(emax+1)),
    # so instead of a NaN -> 0 pass over everything, NaN-scale blocks are zeroed up front
    # (every element of such a block becomes +0, as in the golden).
    if bool(nan_scale.any()):
        v.masked_fill_(nan_scale.unsqueeze(-1), 0.0)
    q = quantize_elements_(v, fmt, round_mode, nan_to_zero=False)
    q = q.flatten(-2)[..., :k]
    return MXResult(q.movedim(-1, axis), e.movedim(-1, axis))


def mx_dequantize(values: torch.Tensor, exponents: torch.Tensor, *, block: int = MX_BLOCK, axis: int = -1) -> torch.Tensor:
    """Exact fp32 ``values * 2**E`` per block (NaN where the scale code was 255)."""
    v = values.movedim(axis, -1).to(torch.float32)
    e = exponents.movedim(axis, -1)
    k = v.shape[-1]
    s = exponent_to_scale(e)
    out = (block_view(v, block) * s.unsqueeze(-1)).flatten(-2)[..., :k]
    return out.movedim(-1, axis)


def to_scale_pairs(codes: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """E8M0 codes with nb blocks along ``axis`` -> pair layout with a trailing 2 (pad code 0)."""
    c = codes.movedim(axis, -1)
    if c.shape[-1] % 2:
        c = torch.nn.functional.pad(c, (0, 1), value=E8M0_PAD_CODE)
    c = c.reshape(*c.shape[:-1], c.shape[-1] // 2, 2)  # (..., nb/2, 2)
    # put the pair axis back where ``axis`` was, keep the trailing 2
    return c.movedim(-2, axis - 1 if axis < 0 else axis)


def from_scale_pairs(pairs: torch.Tensor, nb: int, axis: int = -1) -> torch.Tensor:
    """Inverse of ``to_scale_pairs``: (..., ceil(nb/2), 2) -> (..., nb) along ``axis``."""
    c = pairs.movedim(axis - 1 if axis < 0 else axis, -2)
    c = c.flatten(-2)[..., :nb]
    return c.movedim(-1, axis)


def mx_encode(values: torch.Tensor, fmt: ElemFormat) -> torch.Tensor:
    """Exact element values along the last axis -> storage tensor."""
    if fmt is E2M1:
        return pack_fp4(encode_e2m1(values))
    if fmt is E4M3:
        return encode_e4m3(values)
    raise ValueError(f"no storage form for {fmt.name}")


def mx_decode(data: torch.Tensor, fmt: ElemFormat, k: int | None = None) -> torch.Tensor:
    """Storage tensor -> fp32 element values (..., K)."""
    if fmt is E2M1:
        return decode_e2m1(unpack_fp4(data, k))
    if fmt is E4M3:
        v = decode_e4m3(data)
        return v if k is None else v[..., :k]
    raise ValueError(f"no storage form for {fmt.name}")

