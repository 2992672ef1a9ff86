"""Every number the quantization rules use, defined once.

Sources: OCP Microscaling Formats (MX) v1.0 spec; CANN ops-nn goldens
(``quant/dynamic_mx_quant/tests/assets/golden.py``); torch_npu op docs.  See docs/numerics.md.
"""
from __future__ import annotations

from dataclasses import dataclass

# ---- int8 -------------------------------------------------------------------------------
INT8_QMAX = 127  # symmetric range used by npu_dynamic_quant: [-127, 127]
INT8_MIN = -128  # npu_quantize saturates to [-128, 127]
INT8_MAX = 127
# FP19 as read by the NPU matmul from an int64 deq_scale: sign + 8 exponent + 10 mantissa bits.
FP19_MASK = 0xFFFFE000
TRANS_QUANT_PARAM_FLAG_BIT = 46  # npu_trans_quant_param sets bit 46 of the int64 word

# ---- MX ---------------------------------------------------------------------------------
MX_BLOCK = 32  # elements sharing one E8M0 scale
MX_SCALE_PAIR = 2  # scales are stored as (..., ceil(K/64), 2): two 32-blocks per pair
E8M0_BIAS = 127  # code c -> 2^(c - 127)
E8M0_NAN = 255  # code 255 is NaN; there is no zero
E8M0_MIN_EXP = -127  # code 0 == 2^-127
E8M0_PAD_CODE = 0  # the scale code of padding blocks (pair layout, K padding): every layout and kernel uses it
E8M0_MAX_EXP = 127  # code 254

DUAL_L0_BLOCK = 512  # level-0 (fp32) block of dual-level MXFP4
DUAL_L1_BLOCK = 32  # level-1 (E8M0) block of dual-level MXFP4


@dataclass(frozen=True)
class ElemFormat:
    """An MX element format.

    ``mbits`` counts explicit mantissa bits only (no sign, no implicit bit);
    ``emax`` = floor(log2(max_normal)); ``emin`` = exponent of the smallest normal (the
    exponent used for subnormals); ``max_value`` = largest finite magnitude.
    """

    name: str
    ebits: int
    mbits: int
    emax: int
    emin: int
    max_value: float
    bits: int


E4M3 = ElemFormat("e4m3", ebits=4, mbits=3, emax=8, emin=-6, max_value=448.0, bits=8)  # FP8 E4M3FN
E5M2 = ElemFormat("e5m2", ebits=5, mbits=2, emax=15, emin=-14, max_value=57344.0, bits=8)  # FP8 E5M2
E2M1 = ElemFormat("e2m1", ebits=2, mbits=1, emax=2, emin=0, max_value=6.0, bits=4)  # FP4 E2M1
ELEM_FORMATS = {f.name: f for f in (E4M3, E5M2, E2M1)}

# FP4 E2M1 magnitudes by 3-bit code (bit 3 of a nibble is the sign).
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

# Round modes of npu_dynamic_mx_quant / dual-level quant.
ROUND_MODES = ("rint", "round", "floor")

# torch_npu dtype handles (ACL dtype + 256), from Ascend/pytorch custom_dtype/Init.h.
NPU_HIFLOAT8 = 290
NPU_FLOAT8_E5M2 = 291
NPU_FLOAT8_E4M3FN = 292
NPU_FLOAT8_E8M0FNU = 293
NPU_FLOAT4_E2M1FN_X2 = 296
NPU_FLOAT4_E1M2FN_X2 = 297
ACL_FORMAT_ND = 2
ACL_FORMAT_FRACTAL_NZ = 29
