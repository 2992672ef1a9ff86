"""Property tests (hypothesis): dequantization error bounds and round trips."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from omni_npu_quant.numerics import int8 as I
from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.numerics.constants import E2M1, E4M3
from omni_npu_quant.numerics.mx_dual import dual_level_dequantize, dual_level_quantize

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
floats32 = st.floats(min_value=-2.0 ** 100, max_value=2.0 ** 100, allow_nan=False, allow_infinity=False, width=32)


def _row_arrays(max_k=130):
    return st.integers(1, max_k).flatmap(lambda k: arrays(np.float32, (2, k), elements=floats32))


def _element_bound(x: torch.Tensor, exps: torch.Tensor, fmt, round_mode: str) -> torch.Tensor:
    """Per element: the largest |x - deq| the rule allows (half an ulp for rint/round, one ulp for
    floor, at the element's exponent and block scale; up to 2**(emax+1) - max for saturating values)."""
    k = x.shape[-1]
    scale = MX.mx_dequantize(torch.ones_like(x), exps)  # 2**E broadcast per element
    v = (x.double() / scale.double()).abs()
    pe = torch.floor(torch.log2(v.clamp(min=1e-300))).clamp(min=fmt.emin)
    ulp = torch.pow(2.0, pe - fmt.mbits)
    b = ulp * (0.5 if round_mode != "floor" else 1.0)
    sat = v > fmt.max_value
    b = torch.where(sat, v - fmt.max_value + 0.0, b)
    return (b * scale.double())[..., :k]


@SETTINGS
@given(x=_row_arrays(), fmt=st.sampled_from(["e2m1", "e4m3"]), mode=st.sampled_from(["rint", "round", "floor"]))
def test_mx_dequant_error_bound(x, fmt, mode):
    f = E2M1 if fmt == "e2m1" else E4M3
    if f is E4M3:
        mode = "rint"
    xt = torch.from_numpy(x)
    r = MX.mx_quantize(xt, f, mode, 0)
    deq = MX.mx_dequantize(r.values, r.exponents).double()
    err = (xt.double() - deq).abs()
    bound = _element_bound(xt, r.exponents, f, mode)
    assert bool((err <= bound * (1 + 1e-12) + 1e-300).all()), (err - bound).max().item()
    if mode == "floor":  # floor rounds toward -inf: never above x, except where -max clamps a saturating value
        scale = MX.mx_dequantize(torch.ones_like(xt), r.exponents).double()
        v = (xt.double() / scale).abs()
        sat = v > f.max_value
        # v = x / 2**E is an fp32 operation (as in the CANN golden): below 2**-126 it rounds as an
        # fp32 subnormal, and a tiny negative x can become -0.0 before the floor
        underflow = v < 2.0 ** -126
        assert bool(((deq <= xt.double()) | sat | underflow).all())
    # storage round trip is lossless
    enc = MX.mx_encode(r.values, f)
    assert torch.equal(MX.mx_decode(enc, f, x.shape[-1]), r.values)
    assert torch.equal(MX.from_scale_pairs(MX.to_scale_pairs(r.codes), r.codes.shape[-1]), r.codes)


@SETTINGS
@given(x=_row_arrays())
def test_mx_rule0_never_saturates_fp8_and_fp4_block_max_in_range(x):
    # OCP floor rule: the block max scales into [2**emax, 2**(emax+1)); FP8 max 448 < 512 may
    # saturate only in (448, 512); FP4 only in (6, 8).
    xt = torch.from_numpy(x)
    for f in (E4M3, E2M1):
        r = MX.mx_quantize(xt, f, "rint", 0)
        blocks = MX.block_view(r.values.abs(), 32).amax(-1)
        nz = (blocks > 0) & (r.exponents > -127)  # E clamped at -127 (tiny amax) scales below 2**emax
        assert bool((blocks[nz] >= 2.0 ** f.emax).all())


@SETTINGS
@given(x=_row_arrays(300))
def test_int8_dynamic_error_bound(x):
    xt = torch.from_numpy(x)
    q, s = I.dynamic_quant_int8(xt)
    deq = q.double() * s.double().unsqueeze(-1)
    amax = xt.double().abs().amax(-1, keepdim=True)
    err = (xt.double() - deq).abs()
    # |x - q*s| <= s/2 plus the fp32 rounding of x*inv and of s (a few ulps of amax).  Rows whose
    # amax is so small that s = amax * fp32(1/127) is an fp32 subnormal lose that precision (at
    # amax = 2**-149, 127 / amax overflows to inf and s underflows to 0, as the kernel formula does):
    # there the error is only bounded by amax.
    tiny = amax < 2.0 ** -126 * 127
    bound = torch.where(tiny, amax, s.double().unsqueeze(-1) / 2 + 4e-7 * amax)
    assert bool((err <= bound).all())
    assert int(q.abs().max()) <= 127


@SETTINGS
@given(x=arrays(np.float32, (2, 512), elements=st.floats(-1e4, 1e4, allow_nan=False, width=32)),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_dual_level_error_bound(x, dtype):
    xt = torch.from_numpy(x).to(dtype)
    r = dual_level_quantize(xt, None, "rint")
    deq = dual_level_dequantize(r.values, r.l0, r.exponents).double()
    amax = xt.double().abs().amax(-1, keepdim=True)
    # |t| <= 6 (t = x / l0, l0 = amax / 6).  A 32-block with max t_b gets 2**E = 2**(floor(log2 t_b) - 2)
    # <= t_b / 4; the rint error is <= half an ulp <= 2**E (ulp 2 at the top binade), and a
    # saturating value (v in (6, 8), only when t_b < 4) loses < 2 * 2**E <= 1: both <= 6/4 in t
    # units, i.e. <= amax / 4; plus the cast of t to the input dtype (relative 2**-8 for bf16).
    assert bool(((xt.double() - deq).abs() <= amax / 4 + amax * 2.0 ** -7).all())
