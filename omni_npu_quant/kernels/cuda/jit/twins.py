"""Pure-torch twins of the Triton kernels: the reference numerics in each kernel's output layout.

Each ``twin_<name>`` returns what ``ops.<name>`` returns (same dtypes, shapes, padding), computed
only with ``omni_npu_quant.numerics`` (no Triton).  The GPU tests compare each kernel with its twin.
"""
from __future__ import annotations

import torch

from ....numerics import int8 as I
from ....numerics import mx as MX
from ....numerics.constants import E2M1, ElemFormat
from ....numerics.e8m0 import code_to_exponent, exponent_to_code
from ....numerics.gemm import dual_level_matmul, mx_matmul
from ....numerics.mx_dual import dual_level_quantize
from ....schemes.base import apply_mul_scale

F32 = torch.float32


def _pad_cols(t: torch.Tensor, cols: int, value=0) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, cols - t.shape[-1]), value=value) if t.shape[-1] < cols else t


def twin_int8_dynamic_quant(x2, smooth):
    return I.dynamic_quant_int8(x2, smooth)


def twin_int8_static_quant(x2, smooth, scale, offset):
    return I.static_quant_int8(apply_mul_scale(x2, smooth), scale, offset)


def twin_mx_quant(x2, smooth, fmt: ElemFormat, round_mode, scale_alg, kp, dst_type_max: float = 0.0):
    """-> (q bytes (M, kp) or packed (M, kp/2), codes (M, kp/32), exact dequantized fp32 (M, kp))."""
    xs = apply_mul_scale(x2, smooth)
    xs = _pad_cols(xs, kp)
    r = MX.mx_quantize(xs, fmt, round_mode, scale_alg, dst_type_max=dst_type_max)
    q = MX.mx_encode(r.values, fmt)
    if q.dtype != torch.uint8:
        q = q.view(torch.uint8)
    return q, r.codes, MX.mx_dequantize(r.values, r.exponents)


def twin_dual_quant(x2, smooth, round_mode):
    r = dual_level_quantize(x2, smooth, round_mode)
    return MX.mx_encode(r.values, E2M1), exponent_to_code(r.exponents), r.l0


def twin_int8_gemm(q, w, out_dtype, *, sx=None, ws=None, bias=None, quant_bias=None, deq=None, static=False,
                   group_k=None):
    k = q.shape[1]
    if static:
        acc = I.int8_matmul(q, w)
        if quant_bias is not None:
            acc = acc + quant_bias
        return (acc.to(F32) * deq).to(out_dtype)
    gk = group_k or k
    out = None
    for g in range(k // gk):
        sl = slice(g * gk, (g + 1) * gk)
        part = I.int8_matmul(q[:, sl], w[:, sl]).to(F32) * ws[:, g].reshape(1, -1)
        out = part if out is None else out + part
    out = out * sx.unsqueeze(-1)
    if bias is not None:
        out = out + bias
    return out.to(out_dtype)


def _decode(q, codes, fmt: ElemFormat, kp):
    vals = MX.mx_decode(q.view(torch.float8_e4m3fn) if fmt.bits == 8 else q, fmt, kp)
    return MX.mx_dequantize(vals, code_to_exponent(codes))


def twin_mx_gemm(a_q, a_s, w_q, w_s, n, kp, out_dtype, a_fmt, w_fmt, *, bias=None, l0x=None, l0w=None):
    a = _decode(a_q, a_s, a_fmt, kp)
    w = _decode(w_q, w_s, w_fmt, kp)
    if l0x is not None:
        return dual_level_matmul(a, l0x, w, l0w, bias).to(out_dtype)
    return mx_matmul(a, w, bias).to(out_dtype)


def twin_mx_weight_dequant(w_q, w_s, kp, w_fmt):
    return _decode(w_q, w_s, w_fmt, kp).to(torch.bfloat16)


TWINS = {
    "int8_dynamic_quant": twin_int8_dynamic_quant,
    "int8_static_quant": twin_int8_static_quant,
    "mx_quant": twin_mx_quant,
    "dual_quant": twin_dual_quant,
    "int8_gemm": twin_int8_gemm,
    "mx_gemm": twin_mx_gemm,
    "mx_weight_dequant": twin_mx_weight_dequant,
}
