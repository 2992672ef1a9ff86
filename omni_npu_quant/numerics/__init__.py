"""Pure-torch, device-agnostic quantization numerics: one copy of every rule.

Modules: ``constants`` (numbers and formats), ``bits`` (fp32 exponent field, exact 2**e),
``e8m0`` (shared-scale rules and codec), ``elements`` (element rounding), ``fp4`` / ``fp8``
(codecs, nibble packing), ``mx`` (block quantization, scale-pair layout), ``mx_dual``
(dual-level MXFP4), ``int8`` (dynamic/static int8, deq_scale encodings), ``gemm`` (exact
accumulation rules).  See docs/numerics.md for every rule and its source.
"""
from .constants import E2M1, E4M3, E5M2, ElemFormat, MX_BLOCK, DUAL_L0_BLOCK, DUAL_L1_BLOCK
from .e8m0 import decode_e8m0, exponent_to_code, code_to_exponent, shared_exponent
from .elements import quantize_elements, round_mantissa
from .fp4 import decode_e2m1, encode_e2m1, pack_fp4, unpack_fp4
from .fp8 import decode_e4m3, encode_e4m3
from .mx import MXResult, mx_quantize, mx_dequantize, to_scale_pairs, from_scale_pairs, mx_encode, mx_decode, num_blocks
from .mx_dual import DualResult, dual_level_quantize, dual_level_dequantize, expand_l0
from .int8 import (dynamic_quant_int8, quantize_weight_int8, static_quant_int8, dequantize_int8, fp19_truncate,
                   deq_scale_to_int64, trans_quant_param, decode_deq_scale, int64_deq_scale_to_fp32, int8_matmul)
from .gemm import mx_matmul, dual_level_matmul

__all__ = [n for n in dir() if not n.startswith("_")]
