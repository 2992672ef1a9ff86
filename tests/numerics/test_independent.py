"""Agreement with independent implementations.

* ml_dtypes (``float4_e2m1fn``, ``float8_e4m3fn``, ``float8_e8m0fnu``): every FP4 code, every E4M3 byte
  and every E8M0 code decoded; element rounding (rint) of every finite bf16 value.
* A NumPy implementation of the CANN ``npu_dynamic_mx_quant`` golden recipe (npu_ops.md section 3.5),
  written here from the recipe text (float64/float32 NumPy, ``frexp`` for floor(log2)), compared bit
  for bit with ``mx_quantize`` / ``mx_encode`` / ``to_scale_pairs`` on random inputs.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.numerics.constants import E2M1, E4M3, E5M2
from omni_npu_quant.numerics.e8m0 import decode_e8m0
from omni_npu_quant.numerics.elements import quantize_elements
from omni_npu_quant.numerics.fp4 import decode_e2m1, encode_e2m1
from omni_npu_quant.numerics.fp8 import decode_e4m3, encode_e4m3


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    b = np.ascontiguousarray(b, dtype=np.float32).view(np.uint32)
    return a.shape == b.shape and bool((a == b).all())


# ------------------------------------------------------------------ exhaustive codec checks
def test_every_fp4_code_matches_ml_dtypes():
    codes = np.arange(16, dtype=np.uint8)
    ref = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    ours = decode_e2m1(torch.from_numpy(codes)).numpy()
    assert _same_bits(ours, ref)
    # and back: encoding every value gives its code
    assert encode_e2m1(torch.from_numpy(ref)).numpy().tolist() == codes.tolist()


def test_every_e8m0_code_matches_ml_dtypes():
    codes = np.arange(256, dtype=np.uint8)
    ref = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    ours = decode_e8m0(torch.from_numpy(codes)).numpy()
    assert np.isnan(ours[255]) and np.isnan(ref[255])
    assert _same_bits(ours[:255], ref[:255])


def test_every_e4m3_byte_matches_ml_dtypes():
    b = np.arange(256, dtype=np.uint8)
    ref = b.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    ours = decode_e4m3(torch.from_numpy(b)).numpy()
    nan = np.isnan(ref)
    assert nan.sum() == 2 and (np.isnan(ours) == nan).all()  # 0x7F and 0xFF
    assert _same_bits(ours[~nan], ref[~nan])
    # encoding every finite value gives its byte back
    enc = encode_e4m3(torch.from_numpy(ref[~nan])).view(torch.uint8).numpy()
    assert enc.tolist() == b[~nan].tolist()


def _all_finite_bf16_as_fp32() -> np.ndarray:
    u = np.arange(1 << 16, dtype=np.uint32) << 16
    v = u.view(np.float32)
    return v[np.isfinite(v)]


def test_e4m3_rint_rounding_matches_ml_dtypes_on_every_bf16():
    v = _all_finite_bf16_as_fp32()
    v = v[np.abs(v) <= 464]  # ml_dtypes maps (464, 480] to NaN (no saturation); we clamp to 448
    ours = quantize_elements(torch.from_numpy(v), E4M3, "rint").numpy()
    ref = v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    assert _same_bits(ours, ref)
    big = torch.tensor([465.0, 1e30, -500.0])
    assert quantize_elements(big, E4M3, "rint").tolist() == [448.0, 448.0, -448.0]


def test_e2m1_rint_rounding_matches_ml_dtypes_on_every_bf16():
    v = _all_finite_bf16_as_fp32()
    ours = quantize_elements(torch.from_numpy(v), E2M1, "rint").numpy()
    ref = v.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)  # RNE, saturating to +-6
    assert _same_bits(ours, ref)


def test_e4m3_rint_matches_ml_dtypes_on_random_fp32(rng):
    v = (rng.standard_normal(200_000) * np.exp2(rng.integers(-14, 9, 200_000))).astype(np.float32)
    v = v[np.abs(v) <= 464]
    ours = quantize_elements(torch.from_numpy(v), E4M3, "rint").numpy()
    assert _same_bits(ours, v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))


# ------------------------------------------------------------------ NumPy CANN golden recipe
_FMT = {  # name: (emax, mbits, emin, max)
    "e4m3": (8, 3, -6, 448.0),
    "e5m2": (15, 2, -14, 57344.0),
    "e2m1": (2, 1, 0, 6.0),
}


def _floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) for a > 0 via frexp (a = f * 2**e, f in [0.5, 1))."""
    _, e = np.frexp(a.astype(np.float64))
    return (e - 1).astype(np.int64)


def np_mx_quantize(x: np.ndarray, fmt: str, round_mode: str, scale_alg: int):
    """x: fp32 (M, K), quantized along the last axis in blocks of 32.  Returns (values fp32 (M, K),
    codes uint8 (M, nb))."""
    emax, mbits, emin, maxv = _FMT[fmt]
    m_, k = x.shape
    nb = -(-k // 32)
    xp = np.zeros((m_, nb * 32), np.float32)
    xp[:, :k] = x
    blk = xp.reshape(m_, nb, 32)
    with np.errstate(invalid="ignore"):
        a = np.abs(blk).max(axis=-1)  # NaN propagates through max
    finite = np.isfinite(a)
    safe = np.where(finite & (a > 0), a, 1.0).astype(np.float32)
    if scale_alg == 1 and fmt != "e2m1":
        s = (safe / np.float32(maxv)).astype(np.float32)
        sb = s.view(np.uint32).astype(np.int64)
        eb, mb = (sb >> 23) & 0xFF, sb & 0x7FFFFF
        up = ((eb > 0) & (eb < 254) & (mb > 0)) | ((eb == 0) & (mb > (1 << 22)))
        e = eb + up - 127
    else:
        # floor(log2 a) of the fp32 value; fp32 subnormals count as exponent -127 (field 0)
        e = np.where(safe >= np.float32(2.0 ** -126), _floor_log2(safe), -127) - emax
    e = np.where(finite & (a > 0), e, -127)
    e = np.maximum(e, -127)
    nan_blk = ~finite | (e > 127)
    codes = np.where(nan_blk, 255, e + 127).astype(np.uint8)
    scale = np.ldexp(1.0, np.where(nan_blk, 0, e))[..., None].astype(np.float32)  # 2**-127 is an fp32 subnormal
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        v = (blk / scale).astype(np.float64)  # fp32 division, as the golden (rounds only if v underflows)
    with np.errstate(invalid="ignore", divide="ignore"):
        av = np.abs(v)
        pe = np.where(av > 0, _floor_log2(np.where(av > 0, av, 1.0)), emin)
    pe = np.maximum(pe, emin)
    m = v / np.ldexp(1.0, pe - mbits)
    if round_mode == "rint":
        r = np.rint(m)
    elif round_mode == "round":
        # the golden adds 0.5 in fp32 (the array dtype): reproduce that rounding
        r = np.floor((np.abs(m).astype(np.float32) + np.float32(0.5)).astype(np.float64))
        r = np.where(np.signbit(m), -r, r)
    else:
        r = np.floor(m)
    q = np.clip(r * np.ldexp(1.0, pe - mbits), -maxv, maxv)
    q = np.where(nan_blk[..., None], 0.0, q)
    q = np.where(np.isnan(q), 0.0, q)
    return q.reshape(m_, nb * 32)[:, :k].astype(np.float32), codes


def np_pack_fp4(values: np.ndarray) -> np.ndarray:
    table = {0.0: 0, 0.5: 1, 1.0: 2, 1.5: 3, 2.0: 4, 3.0: 5, 4.0: 6, 6.0: 7}
    codes = np.vectorize(lambda f: table[abs(float(f))] | (8 if np.signbit(f) else 0), otypes=[np.uint8])(values)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def np_scale_pairs(codes: np.ndarray) -> np.ndarray:
    m_, nb = codes.shape
    out = np.zeros((m_, -(-nb // 2) * 2), np.uint8)  # padding code 0
    out[:, :nb] = codes
    return out.reshape(m_, -1, 2)


def _random_input(rng, k: int) -> np.ndarray:
    mag = 10.0 ** rng.uniform(-6, 6, size=(3, 1))
    x = (rng.standard_normal((3, k)) * mag).astype(np.float32)
    if k > 32 and rng.random() < 0.5:
        x[:, 32:64] = 0  # a zero block
    if rng.random() < 0.3:
        x[rng.integers(0, 3), :] = 0  # a zero row
    if rng.random() < 0.2:
        x[rng.integers(0, 3), rng.integers(0, k)] = -1e-38  # x / 2**E underflows in fp32 when its block max is large
    return x


_CASES = [
    ("e4m3", "rint", 0), ("e4m3", "rint", 1), ("e5m2", "rint", 0), ("e5m2", "rint", 1),
    ("e2m1", "rint", 0), ("e2m1", "round", 0), ("e2m1", "floor", 0), ("e2m1", "rint", 1),
]


@pytest.mark.parametrize("case", range(len(_CASES)))
def test_mx_quantize_matches_numpy_golden(rng, case):
    fmt, round_mode, scale_alg = _CASES[case]
    fm = {"e4m3": E4M3, "e5m2": E5M2, "e2m1": E2M1}[fmt]
    # K = 1..199: every case covers every third K (offset by case), so all K are covered 2-3 times
    for k in range(1 + case % 3, 200, 3):
        x = _random_input(rng, k)
        ref_v, ref_c = np_mx_quantize(x, fmt, round_mode, scale_alg)
        r = MX.mx_quantize(torch.from_numpy(x), fm, round_mode, scale_alg)
        assert r.codes.numpy().tolist() == ref_c.tolist(), f"codes differ at K={k}"
        assert _same_bits(r.values.numpy(), ref_v), f"values differ at K={k}"


def test_mx_storage_matches_numpy_golden(rng):
    for k in (1, 2, 31, 33, 64, 65, 127, 199):
        x = _random_input(rng, k)
        ref_v, ref_c = np_mx_quantize(x, "e2m1", "rint", 0)
        r = MX.mx_quantize(torch.from_numpy(x), E2M1, "rint", 0)
        assert MX.mx_encode(r.values, E2M1).numpy().tolist() == np_pack_fp4(ref_v).tolist()
        assert MX.to_scale_pairs(r.codes).numpy().tolist() == np_scale_pairs(ref_c).tolist()
        r8 = MX.mx_quantize(torch.from_numpy(x), E4M3, "rint", 0)
        ref8, _ = np_mx_quantize(x, "e4m3", "rint", 0)
        assert MX.mx_encode(r8.values, E4M3).view(torch.uint8).numpy().tolist() == \
            ref8.astype(ml_dtypes.float8_e4m3fn).view(np.uint8).tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mx_quantize_half_inputs_match_numpy_golden(rng, dtype):
    # the golden widens bf16/fp16 to fp32 first; so does mx_quantize
    for k in (5, 32, 47, 96, 150):
        x = torch.from_numpy(_random_input(rng, k)).clamp(-6e4, 6e4).to(dtype)
        ref_v, ref_c = np_mx_quantize(x.float().numpy(), "e2m1", "round", 0)
        r = MX.mx_quantize(x, E2M1, "round", 0)
        assert r.codes.numpy().tolist() == ref_c.tolist() and _same_bits(r.values.numpy(), ref_v)


def test_nan_inf_blocks_match_numpy_golden():
    x = np.ones((2, 64), np.float32)
    x[0, 3] = np.nan
    x[1, 40] = -np.inf
    ref_v, ref_c = np_mx_quantize(x, "e4m3", "rint", 0)
    r = MX.mx_quantize(torch.from_numpy(x), E4M3, "rint", 0)
    assert ref_c.tolist() == [[255, 119], [119, 255]] == r.codes.tolist()
    assert _same_bits(r.values.numpy(), ref_v)
