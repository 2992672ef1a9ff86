"""Golden vectors worked out by hand.  Every expected value is written literally, with the derivation
in a comment, so a change to any rounding mode, tie rule, saturation, scale rule, packing order or
layout makes one of these fail.

Notation: for an element format with ``mbits`` mantissa bits, a scaled value v has
``pe = max(floor(log2|v|), emin)``, ulp ``2**(pe - mbits)`` and mantissa ``m = v / ulp``; the
element is ``round(m) * ulp`` clamped to +-max.  E2M1: mbits 1, emin 0, max 6.  E4M3: mbits 3,
emin -6, max 448.
"""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.numerics import int8 as I
from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.numerics.constants import E2M1, E4M3, E5M2
from omni_npu_quant.numerics.e8m0 import _rceil_exponent, decode_e8m0, exponent_to_code, shared_exponent
from omni_npu_quant.numerics.elements import quantize_elements
from omni_npu_quant.numerics.fp4 import decode_e2m1, encode_e2m1, pack_fp4, unpack_fp4
from omni_npu_quant.numerics.mx_dual import dual_level_quantize


def bits(t: torch.Tensor) -> list[int]:
    """fp32 bit patterns: distinguishes -0.0 from +0.0."""
    return t.to(torch.float32).contiguous().view(torch.int32).tolist()


def f32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# FP4 E2M1 element rounding: ties under rint (half even), round (half away), floor (toward -inf)
# ---------------------------------------------------------------------------------------------
FP4_INPUTS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -1.25, -0.25, -2.5, 100.0, -1e30]
# v      pe  ulp   m      rint          round          floor
# 0.25   0   0.5   0.5    0 -> 0        1 -> 0.5       0 -> 0
# 0.75   0   0.5   1.5    2 -> 1.0      2 -> 1.0       1 -> 0.5
# 1.25   0   0.5   2.5    2 -> 1.0      3 -> 1.5       2 -> 1.0
# 1.75   0   0.5   3.5    4 -> 2.0      4 -> 2.0       3 -> 1.5
# 2.5    1   1     2.5    2 -> 2.0      3 -> 3.0       2 -> 2.0
# 3.5    1   1     3.5    4 -> 4.0      4 -> 4.0       3 -> 3.0
# 5.0    2   2     2.5    2 -> 4.0      3 -> 6.0       2 -> 4.0
# 7.0    2   2     3.5    4 -> 8 -> 6   4 -> 8 -> 6    3 -> 6.0
# -1.25  0   0.5   -2.5   -2 -> -1.0    -3 -> -1.5     -3 -> -1.5
# -0.25  0   0.5   -0.5   -0 -> -0.0    -1 -> -0.5     -1 -> -0.5
# -2.5   1   1     -2.5   -2 -> -2.0    -3 -> -3.0     -3 -> -3.0
# 100    6   64    1.56   2*64 -> 6     same -> 6      1*64 -> 6      (saturation)
# -1e30  ...                  -> -6         -> -6          -> -6
FP4_EXPECTED = {
    "rint": [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -1.0, -0.0, -2.0, 6.0, -6.0],
    "round": [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 6.0, -1.5, -0.5, -3.0, 6.0, -6.0],
    "floor": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -1.5, -0.5, -3.0, 6.0, -6.0],
}


@pytest.mark.parametrize("mode", ["rint", "round", "floor"])
def test_fp4_element_ties_and_saturation(mode):
    got = quantize_elements(f32(FP4_INPUTS), E2M1, mode)
    assert bits(got) == bits(f32(FP4_EXPECTED[mode])), got.tolist()


def test_fp4_round_mode_keeps_golden_fp32_add():
    # "round" is floor(|m| + fp32(0.5)) as in the CANN golden: for m = 0.5 - 2**-25 the fp32 sum
    # 1 - 2**-25 is a tie between 1 - 2**-24 (odd) and 1.0 (even) -> 1.0, so m rounds to 1.
    # v = m * ulp = (0.5 - 2**-25) * 0.5 -> element 1 * 0.5 = 0.5 (exact half-away would give 0).
    v = f32([(0.5 - 2.0 ** -25) * 0.5])
    assert quantize_elements(v, E2M1, "round").tolist() == [0.5]
    assert quantize_elements(v, E2M1, "rint").tolist() == [0.0]


def test_fp4_nan_inf_elements():
    # NaN -> +0 (golden); +-Inf saturates to +-6 in the element rule (blocks with Inf never get here:
    # their scale is NaN and the block is zeroed, tested below).
    got = quantize_elements(f32([float("nan"), float("inf"), float("-inf")]), E2M1, "rint")
    assert bits(got) == bits(f32([0.0, 6.0, -6.0]))


# ---------------------------------------------------------------------------------------------
# FP8 E4M3 element rounding (rint only), saturation at 448, subnormals down to 2**-9
# ---------------------------------------------------------------------------------------------
def test_fp8_e4m3_ties_saturation_subnormals():
    inputs = [17.0, 19.0, 464.0, 480.0, 1e9, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10, 2.0 ** -7 + 2.0 ** -10, -19.0]
    # 17: pe 4, ulp 2, m 8.5 -> 8 (even) -> 16          19: m 9.5 -> 10 -> 20
    # 464: pe 8, ulp 32, m 14.5 -> 14 -> 448            480: m 15 -> 480 -> clamp 448
    # 1e9 -> clamp 448
    # 2**-9: pe clamped to -6, ulp 2**-9, m 1 -> 2**-9 (smallest subnormal)
    # 2**-10: m 0.5 -> 0 (even)                         3*2**-10: m 1.5 -> 2 -> 2**-8
    # 2**-7 + 2**-10: pe -7 -> clamped -6, ulp 2**-9, m 4.5 -> 4 -> 2**-7
    expected = [16.0, 20.0, 448.0, 448.0, 448.0, 2.0 ** -9, 0.0, 2.0 ** -8, 2.0 ** -7, -20.0]
    assert bits(quantize_elements(f32(inputs), E4M3, "rint")) == bits(f32(expected))


def test_fp8_rejects_non_rint():
    with pytest.raises(ValueError, match="rint"):
        MX.mx_quantize(torch.ones(32), E4M3, "round", 0)


# ---------------------------------------------------------------------------------------------
# E8M0 shared exponents: scale_alg 0 (OCP floor), 1 (RCEIL, FP8), 2 (UOS, FP4)
# ---------------------------------------------------------------------------------------------
def _codes(amax, fmt, alg, dst_type_max=0.0):
    return exponent_to_code(shared_exponent(f32(amax), fmt, alg, dst_type_max)).tolist()


def test_scale_alg0_codes():
    # E = floor(log2 amax) - emax; code = E + 127.  FP4 emax 2, E4M3 emax 8, E5M2 emax 15.
    # FP4: 6 -> 2-2=0 -> 127; 7.99 -> 0 -> 127; 8 -> 1 -> 128; 1 -> -2 -> 125; 0 -> code 0;
    #      2**-125 -> -127 -> 0; 2**-130 (fp32/bf16 subnormal: exponent field 0) -> clamp -127 -> 0;
    #      1.5 * 2**127 -> 125 -> 252; nan, inf -> 255
    fp4 = [6.0, 7.99, 8.0, 1.0, 0.0, 2.0 ** -125, 2.0 ** -130, 1.5 * 2.0 ** 127, float("nan"), float("inf")]
    assert _codes(fp4, E2M1, 0) == [127, 127, 128, 125, 0, 0, 0, 252, 255, 255]
    # E4M3: 448 -> 8-8 = 0 -> 127; 1 -> -8 -> 119; 2**-118 -> -126 -> 1; 2**-119 -> -127 -> 0
    assert _codes([448.0, 1.0, 2.0 ** -118, 2.0 ** -119], E4M3, 0) == [127, 119, 1, 0]
    # E5M2: 57344 = 1.75 * 2**15 -> 0 -> 127
    assert _codes([57344.0], E5M2, 0) == [127]


def test_scale_alg1_rceil_boundaries():
    # S = fp32(amax / 448); Eb, Mb = biased exponent / mantissa of S;
    # Eb += 1 if (0 < Eb < 254 and Mb > 0) or (Eb == 0 and Mb > 2**22); code = Eb.
    # 448 -> S 1.0 (Eb 127, Mb 0) -> 127;  449 -> S 1.00223 (Mb > 0) -> 128;  896 -> S 2.0 -> 128;
    # 224 -> S 0.5 -> 126;  0 -> code 0
    assert _codes([448.0, 449.0, 896.0, 224.0, 0.0], E4M3, 1) == [127, 128, 128, 126, 0]
    # E5M2: 57344 -> S 1.0 -> 127; 57345 -> 128
    assert _codes([57344.0, 57345.0], E5M2, 1) == [127, 128]
    # the rule on S bit patterns directly (all branches):
    s_bits = [
        0x00000001,  # Eb 0, Mb 1 (<= 2**22): stays  -> E -127 -> code 0
        0x00400000,  # Eb 0, Mb 2**22 exactly: stays -> code 0
        0x00400001,  # Eb 0, Mb 2**22 + 1: up        -> code 1
        0x007FFFFF,  # Eb 0, Mb max: up              -> code 1
        0x00800000,  # Eb 1, Mb 0: stays             -> code 1
        0x3F800000,  # 1.0                           -> code 127
        0x3F800001,  # 1.0 + ulp: up                 -> code 128
        0x7E800001,  # Eb 253, Mb 1: up              -> code 254
        0x7F000000,  # Eb 254, Mb 0: stays           -> code 254
        0x7F000001,  # Eb 254, Mb > 0: no bump at 254 -> code 254
    ]
    s = torch.tensor(s_bits, dtype=torch.int32).view(torch.float32)
    assert exponent_to_code(_rceil_exponent(s)).tolist() == [0, 0, 1, 1, 1, 127, 128, 254, 254, 254]


def test_scale_alg1_on_fp4_is_rule0():
    # the golden applies RCEIL to FP8 only: FP4 with scale_alg=1 uses the floor rule (7 -> 127, not 128)
    assert _codes([7.0], E2M1, 1) == _codes([7.0], E2M1, 0) == [127]


def test_scale_alg2_uos():
    # dst_type_max 0/6: ceil when amax / 2**floor(log2 amax) > 1.5.  6 = 1.5 * 4 -> floor -> E 0 -> 127;
    # 6.5 = 1.625 * 4 -> E 1 -> 128.  dst_type_max 7: threshold 1.75: 7 -> 127, 7.5 -> 128.
    assert _codes([6.0, 6.5], E2M1, 2, 0.0) == [127, 128]
    assert _codes([6.0, 6.5], E2M1, 2, 6.0) == [127, 128]
    assert _codes([7.0, 7.5], E2M1, 2, 7.0) == [127, 128]
    # dst_type_max 8: RCEIL of amax / 8: 8 -> S 1 -> 127; 8.5 -> 128
    assert _codes([8.0, 8.5], E2M1, 2, 8.0) == [127, 128]
    with pytest.raises(ValueError, match="E2M1"):
        shared_exponent(f32([1.0]), E4M3, 2)
    with pytest.raises(ValueError, match="dst_type_max"):
        shared_exponent(f32([1.0]), E2M1, 2, 13.0)


def test_e8m0_decode_special_codes():
    # code 0 -> 2**-127 (fp32 subnormal, exact); 127 -> 1; 254 -> 2**127; 255 -> NaN
    got = decode_e8m0(torch.tensor([0, 1, 127, 254, 255], dtype=torch.uint8))
    assert got[:4].tolist() == [2.0 ** -127, 2.0 ** -126, 1.0, 2.0 ** 127]
    assert torch.isnan(got[4])


# ---------------------------------------------------------------------------------------------
# Whole MX blocks: zero blocks, NaN/Inf blocks, K not a multiple of 32, dtypes
# ---------------------------------------------------------------------------------------------
def test_mx_block_nan_inf_zero_blocks():
    x = torch.zeros(4, 32)
    x[0, 3] = float("nan")
    x[1, 5] = float("-inf")
    x[2, :] = 1.0
    x[2, 7] = 3.0  # amax 3 -> E = 1 - 2 = -1 -> code 126; 1 -> v 2 -> 2 ; 3 -> v 6 -> 6
    r = MX.mx_quantize(x, E2M1, "rint", 0)
    assert r.codes.tolist() == [[255], [255], [126], [0]]
    assert bits(r.values[0]) == [0] * 32 and bits(r.values[1]) == [0] * 32  # NaN/Inf blocks -> +0
    assert r.values[2, 7].item() == 6.0 and r.values[2, 0].item() == 2.0
    assert bits(r.values[3]) == [0] * 32
    d = MX.mx_dequantize(r.values, r.exponents)
    assert torch.isnan(d[0]).all() and torch.isnan(d[1]).all()
    assert d[2, 7].item() == 3.0 and d[2, 0].item() == 1.0


def test_mx_k_not_multiple_of_32():
    # K = 33: block 0 = x[0:32], block 1 = x[32] padded with 31 zeros
    x = torch.full((1, 33), 0.5)
    x[0, 32] = 12.0  # block 1: amax 12 -> floor(log2 12) = 3 -> E 1 -> code 128, v 6 -> 6
    r = MX.mx_quantize(x, E2M1, "rint", 0)
    # block 0: amax 0.5 -> E -1 - 2 = -3 -> code 124, v = 0.5 * 8 = 4 -> 4
    assert r.codes.tolist() == [[124, 128]]
    assert r.values.shape == (1, 33)
    assert r.values[0, 0].item() == 4.0 and r.values[0, 32].item() == 6.0
    enc = MX.mx_encode(r.values, E2M1)
    assert enc.shape == (1, 17)  # ceil(33 / 2), padded with code 0
    assert enc[0, 16].item() == 0x07  # element 32 = 6.0 -> code 7 in the low nibble, pad 0 high
    assert torch.equal(MX.mx_decode(enc, E2M1, 33), r.values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mx_input_dtypes(dtype):
    # 1.75 and 3.5 are exact in every dtype; amax 3.5 -> E = 1 - 2 = -1 (code 126);
    # 1.75 / 0.5 = 3.5 -> rint 4.0 (FP4 ulp 1 at pe 1: m 3.5 -> 4);  3.5 / 0.5 = 7 -> 8 -> 6
    x = torch.tensor([[1.75, 3.5] + [0.0] * 30], dtype=dtype)
    r = MX.mx_quantize(x, E2M1, "rint", 0)
    assert r.codes.tolist() == [[126]]
    assert r.values[0, :2].tolist() == [4.0, 6.0]


def test_subnormal_inputs_bf16_fp16():
    # fp16 subnormal 2**-24 alone: amax field -> floor log2 = -24 -> E4M3 E = -32 -> code 95; v = 2**8 -> 256
    x = torch.zeros(1, 32, dtype=torch.float16)
    x[0, 0] = 2.0 ** -24
    r = MX.mx_quantize(x, E4M3, "rint", 0)
    assert r.codes.tolist() == [[95]] and r.values[0, 0].item() == 256.0
    # bf16 subnormal 2**-130: the fp32 exponent field is 0 -> E clamps to -127 -> code 0;
    # v = 2**-130 / 2**-127 = 0.125 -> E4M3: pe -3, ulp 2**-6, m 8 -> 0.125
    y = torch.zeros(1, 32, dtype=torch.bfloat16)
    y[0, 0] = 2.0 ** -130
    r = MX.mx_quantize(y, E4M3, "rint", 0)
    assert r.codes.tolist() == [[0]] and r.values[0, 0].item() == 0.125


# ---------------------------------------------------------------------------------------------
# FP4 codec and packing order; E8M0 scale-pair layout
# ---------------------------------------------------------------------------------------------
def test_fp4_codes_and_packing_order():
    vals = f32([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
    codes = encode_e2m1(vals)
    assert codes.tolist() == list(range(16))  # bit 3 = sign, bits 0-2 index the magnitude table
    # element 2j -> low nibble, 2j+1 -> high nibble: [0.5, 1.0, -6.0, 6.0] = codes [1, 2, 15, 7]
    packed = pack_fp4(encode_e2m1(f32([0.5, 1.0, -6.0, 6.0])))
    assert packed.tolist() == [0x21, 0x7F]
    # odd K: [1, 2, 3] -> [0x21, 0x03] (pad high nibble with code 0)
    assert pack_fp4(torch.tensor([1, 2, 3], dtype=torch.uint8)).tolist() == [0x21, 0x03]
    assert unpack_fp4(torch.tensor([0x21, 0x03], dtype=torch.uint8), 3).tolist() == [1, 2, 3]
    assert bits(decode_e2m1(torch.tensor([8, 15], dtype=torch.uint8))) == bits(f32([-0.0, -6.0]))
    for bad in (0.25, 5.0, 0.75, 7.0, float("nan")):
        with pytest.raises(ValueError, match="E2M1"):
            encode_e2m1(f32([bad]))


def test_scale_pairs_layout():
    codes = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.uint8)  # (M=2, nb=3)
    pairs = MX.to_scale_pairs(codes)  # (M, ceil(3/2)=2, 2), padded with code 0
    assert pairs.tolist() == [[[1, 2], [3, 0]], [[4, 5], [6, 0]]]
    assert torch.equal(MX.from_scale_pairs(pairs, 3), codes)
    # axis=-2 on a (K-blocks=3, N=2) weight-like tensor: a pair holds blocks 2j, 2j+1 of one column
    kn = codes.T.contiguous()  # [[1, 4], [2, 5], [3, 6]]
    p2 = MX.to_scale_pairs(kn, axis=-2)
    assert p2.shape == (2, 2, 2)
    assert p2.tolist() == [[[1, 2], [4, 5]], [[3, 0], [6, 0]]]
    assert torch.equal(MX.from_scale_pairs(p2, 3, axis=-2), kn)


def test_mx_quantize_axis_minus2_matches_transpose():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(70, 9, generator=g)  # (K, N): blocks along K = axis -2
    a = MX.mx_quantize(w, E2M1, "rint", 0, axis=-2)
    b = MX.mx_quantize(w.T, E2M1, "rint", 0, axis=-1)
    assert a.exponents.shape == (3, 9)
    assert torch.equal(a.values, b.values.T) and torch.equal(a.exponents, b.exponents.T)


# ---------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------
def test_int8_dynamic_ties_and_zero_rows():
    x = f32([[2.5, 3.5, -2.5, 127.0, -127.0, 0.5], [0.0] * 6, [1.0, 3.0, 5.0, 254.0, -254.0, 0.0]])
    q, s = I.dynamic_quant_int8(x)
    # row 0: amax 127 -> inv = fp32(127/127) = 1 -> rint: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, 0.5 -> 0
    # row 1: all zero -> q 0, scale 0 (defined by us; hardware would give 0 * inf)
    # row 2: amax 254 -> inv 0.5 -> [0.5, 1.5, 2.5, 127, -127, 0] -> [0, 2, 2, 127, -127, 0]
    assert q.tolist() == [[2, 4, -2, 127, -127, 0], [0] * 6, [0, 2, 2, 127, -127, 0]]
    # scale = fp32(amax * fp32(1/127)); fp32(1/127) = 0x3C010204 and 127 * it rounds to 1.0 exactly
    assert bits(s) == [0x3F800000, 0, 0x40000000]


def test_int8_static_saturation_and_ties():
    # v = x * 0.5 + 3: [1, 3, 5, 1000, -1000, -7] -> [3.5, 4.5, 5.5, 503, -497, -0.5]
    # rint (half even): 4, 4, 6, clamp 127, clamp -128, -0 -> 0
    q = I.static_quant_int8(f32([1.0, 3.0, 5.0, 1000.0, -1000.0, -7.0]), f32([0.5]), f32([3.0]))
    assert q.tolist() == [4, 4, 6, 127, -128, 0]
    assert q.dtype == torch.int8


def test_deq_scale_int64_encodings():
    s = f32([0.5, -0.5, 1.0 + 2.0 ** -23])
    # msModelSlim: fp32 bits as int32, sign-extended: 0.5 = 0x3F000000 = 1056964608;
    # -0.5 = 0xBF000000 -> int32 -1090519040 -> int64 -1090519040
    assert I.deq_scale_to_int64(s[:2]).tolist() == [1056964608, -1090519040]
    # trans_quant_param: bits & 0xFFFFE000 | 1 << 46.  1 + 2**-23 = 0x3F800001 -> 0x3F800000
    flag = 1 << 46
    assert I.trans_quant_param(s[[0, 2]]).tolist() == [0x3F000000 | flag, 0x3F800000 | flag]
    # negative scale: the fp32 bits are taken as uint32: 0xBF000000 | flag
    assert I.trans_quant_param(s[1:2]).tolist() == [0xBF000000 | flag]
    # round_mode=1 (RNE at bit 13): 0x3F801000 tie, kept lsb 0 -> down; 0x3F803000 tie, lsb 1 -> up
    # to 0x3F804000; 0x3F801001 above half -> up to 0x3F802000
    r = torch.tensor([0x3F801000, 0x3F803000, 0x3F801001], dtype=torch.int32).view(torch.float32)
    assert I.trans_quant_param(r, round_mode=1).tolist() == [0x3F800000 | flag, 0x3F804000 | flag, 0x3F802000 | flag]
    # offset in bits 37..45 as a 9-bit two's complement, clamped to [-256, 255]: -1 -> 0x1FF; 300 -> 255
    o = I.trans_quant_param(f32([1.0, 1.0]), offset=f32([-1.0, 300.0]))
    assert o.tolist() == [0x3F800000 | flag | (0x1FF << 37), 0x3F800000 | flag | (0xFF << 37)]
    # every NPU matmul reads low 32 bits & 0xFFFFE000: both encodings decode to the FP19 value
    assert I.decode_deq_scale(I.trans_quant_param(s)).tolist() == [0.5, -0.5, 1.0]
    assert I.decode_deq_scale(I.deq_scale_to_int64(s)).tolist() == [0.5, -0.5, 1.0]
    assert I.int64_deq_scale_to_fp32(I.deq_scale_to_int64(s)).tolist() == s.tolist()  # full value kept
    # FP19 = sign + 8 exponent + 10 mantissa bits: 1 + 2**-10 survives, 1 + 2**-11 does not
    assert I.fp19_truncate(f32([1 + 2.0 ** -10, 1 + 2.0 ** -11])).tolist() == [1 + 2.0 ** -10, 1.0]


def test_int8_matmul_exact():
    a = torch.tensor([[127, -128, 1]], dtype=torch.int8)
    b = torch.tensor([[127, -128, 1], [-128, -128, -128]], dtype=torch.int8)
    # 127*127 + 128*128 + 1 = 16129 + 16384 + 1 = 32514;  -127*128 + 128*128 - 128 = 0
    assert I.int8_matmul(a, b).tolist() == [[32514, 0]]


# ---------------------------------------------------------------------------------------------
# Dual-level MXFP4
# ---------------------------------------------------------------------------------------------
def test_dual_level_hand_vector():
    x = torch.zeros(1, 512)
    x[0, 0], x[0, 1], x[0, 2] = 3.0, -1.5, 0.25
    x[0, 32] = 0.1
    r = dual_level_quantize(x, None, "rint")
    # l0 = amax / 6 = 0.5;  t = x / 0.5: block 0 = [6, -3, 0.5]: amax 6 -> E 0 -> exact
    assert r.l0.tolist() == [[0.5]]
    assert r.values[0, :3].tolist() == [6.0, -3.0, 0.5] and r.exponents[0, 0].item() == 0
    # block 1: t = fp32(0.1) / 0.5 = 0.2 -> E = floor(log2 0.2) - 2 = -5; v = 6.4 -> pe 2, m 3.2 -> 3 -> 6
    assert r.exponents[0, 1].item() == -5 and r.values[0, 32].item() == 6.0
    # blocks 2..15 are zero -> code 0
    assert exponent_to_code(r.exponents)[0, 2:].tolist() == [0] * 14


def test_dual_level_t_rounded_to_input_dtype():
    # amax 1 -> l0 = fp32(1/6) = 0.16666667; x = bf16 0.208984375 -> t = 1.2539062 (fp32)
    # t in bf16 = 1.25 (tie for FP4 at pe 0: m 2.5 -> rint 2 -> 1.0); kept in fp32: m 2.508 -> 3 -> 1.5
    x = torch.zeros(1, 512, dtype=torch.bfloat16)
    x[0, 0], x[0, 1] = 1.0, 0.208984375
    r = dual_level_quantize(x, None, "rint")
    assert r.values[0, :2].tolist() == [6.0, 1.0]
    r32 = dual_level_quantize(x, None, "rint", work_dtype=torch.float32)
    assert r32.values[0, :2].tolist() == [6.0, 1.5]


def test_dual_level_smooth_applied_first_and_zero_block():
    # smooth multiplies before l0: x = [1, 1] * smooth [2, 6] -> [2, 6]: l0 = 6 / 6 = 1, t = [2, 6]
    x = torch.zeros(2, 1024)
    x[0, 0], x[0, 1] = 1.0, 1.0
    smooth = torch.ones(1024)
    smooth[0], smooth[1] = 2.0, 6.0
    r = dual_level_quantize(x, smooth, "rint")
    assert r.l0.tolist() == [[1.0, 0.0], [0.0, 0.0]]  # the all-zero 512-blocks: l0 = 0 (our definition)
    assert r.values[0, :2].tolist() == [2.0, 6.0]
    assert torch.count_nonzero(r.values[1]) == 0 and exponent_to_code(r.exponents)[1].tolist() == [0] * 32
    with pytest.raises(ValueError, match="channels"):
        dual_level_quantize(x, torch.ones(5), "rint")


def test_dual_level_nan_block():
    x = torch.ones(1, 1024)
    x[0, 700] = float("nan")
    r = dual_level_quantize(x, None, "rint")
    # block 1 carries the NaN: l0 NaN, every level-1 code 255, elements 0; block 0 untouched
    assert r.l0[0, 0].item() == torch.tensor(1 / 6, dtype=torch.float32).item()  # fp32(1 / 6)
    assert torch.isnan(r.l0[0, 1])
    codes = exponent_to_code(r.exponents)[0]
    assert codes[16:].tolist() == [255] * 16 and torch.count_nonzero(r.values[0, 512:]) == 0
