"""Pure-torch twins of the Triton kernels: the reference numerics in each kernel's output layout.

Each ``twin_<name>`` returns what ``ops.<name>`` returns (same dtypes, shapes, padding), computed
only with ``omni_npu_quant.numerics`` (no Triton).  The GPU tests compare each kernel with its twin.
"""
from __future__ import annotations

import torch

from ....numerics import int8 as I
from ....numerics import mx as MX
from ....numerics.constants import E2M1, E4M3, ElemFormat
from ....numerics.elements import quantize_elements_
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


# ---------------------------------------------------------------------------------------------
# FP8-tensor-core MX path (jit/fp8tc.py): MX operands rescaled per row onto the E4M3 grid
# ---------------------------------------------------------------------------------------------
def rowwise_headroom(fmt: ElemFormat) -> int:
    """Binades a row's largest block may be shifted *up* without leaving E4M3: E2M1 values (max 6)
    fit 6 * 2**6 = 384 <= 448, so E2M1 rows are exact over a 14-binade window; E4M3 elements: 0."""
    return 6 if fmt is E2M1 else 0


def _pow2_wide(e: torch.Tensor) -> torch.Tensor:
    """Exact fp32 2**e for integer e in [-149, 127] (through float64)."""
    return torch.ldexp(torch.ones_like(e, dtype=torch.float64), e.to(torch.int64)).to(F32)


def rowwise_rescale(values: torch.Tensor, exponents: torch.Tensor, fmt: ElemFormat, nonzero: torch.Tensor | None = None):
    """Exact MX element values (R, Kp) fp32 + block exponents (R, Kp/32) int32 (128 = NaN scale, -127 =
    zero/tiny) -> (E4M3 bytes (R, Kp) uint8, row scale fp32 (R,), exact bool (R,)).

    Row exponent S = (largest exponent of a block holding a non-zero value) - headroom (0 if none);
    element -> RNE_E4M3(value * 2**(e_block - S)); row scale 2**S (NaN if any block scale is NaN).
    ``exact``: every element survived (then row scale * E4M3 value == the MX value bit for bit).
    ``nonzero`` (R, Kp/32): which blocks set the row exponent (default: blocks with a non-zero value;
    activations pass "blocks whose input |max| is not 0", what the kernel's first pass sees)."""
    r, kp = values.shape
    vb = values.reshape(r, kp // 32, 32)  # explicit: R may be 0
    if nonzero is None:
        nonzero = (vb != 0).any(-1)
    nan_row = (exponents >= 128).any(-1)
    e = exponents.clamp(max=127)
    emax = torch.where(nonzero, e, torch.full_like(e, -100000)).amax(-1)
    s = torch.where(nonzero.any(-1), emax - rowwise_headroom(fmt), torch.zeros_like(emax))
    shift = (e - s[:, None]).clamp(min=-64, max=rowwise_headroom(fmt))  # above: NaN-scale blocks (all zeros)
    v = (vb * pow2_shift(shift)[..., None]).reshape(r, kp).contiguous()
    q = quantize_elements_(v.clone(), E4M3, "rint", nan_to_zero=True)
    exact = (q == v).all(-1) & ~nan_row
    scale = _pow2_wide(s)
    scale = torch.where(nan_row, torch.full_like(scale, float("nan")), scale)
    return MX.mx_encode(q, E4M3).view(torch.uint8), scale, exact


def pow2_shift(shift: torch.Tensor) -> torch.Tensor:
    """Exact fp32 2**shift for integer shift in [-64, 6]."""
    return ((shift.to(torch.int32) + 127) << 23).view(F32)


def twin_mx_quant_rowwise(x2, smooth, fmt: ElemFormat, round_mode, scale_alg, kp):
    """-> (MX q bytes, E8M0 codes) exactly as ``twin_mx_quant``, plus (E4M3 bytes (M, kp), row scale (M,))."""
    xs = _pad_cols(apply_mul_scale(x2, smooth), kp)
    r = MX.mx_quantize(xs, fmt, round_mode, scale_alg)
    q = MX.mx_encode(r.values, fmt)
    if q.dtype != torch.uint8:
        q = q.view(torch.uint8)
    kp_pad = r.values.shape[-1]
    nonzero = (MX.block_view(xs.to(F32), 32)[..., :kp_pad // 32, :] != 0).any(-1)  # NaN counts as non-zero
    xr, sx, _ = rowwise_rescale(r.values, r.exponents, fmt, nonzero)
    return q, r.codes, xr, sx


def rowwise_weight(w_q, w_s, kp, fmt: ElemFormat):
    """Stored MX weight (N, kp[/2]) + codes (N, kp/32) -> (E4M3 bytes (N, kp), row scale (N,), exact (N,))."""
    vals = MX.mx_decode(w_q.view(torch.float8_e4m3fn) if fmt.bits == 8 else w_q, fmt, kp).to(F32)
    e = code_to_exponent(w_s.to(torch.int32) if w_s.dtype != torch.uint8 else w_s)
    return rowwise_rescale(vals, e.to(torch.int32), fmt)


def twin_fp8_rowwise_gemm(xr, sx, wr, sw, out_dtype, *, bias=None):
    """(M, Kp) and (N, Kp) E4M3 bytes with fp32 row scales -> out_dtype (M, N); float64 sums."""
    a = xr.view(torch.float8_e4m3fn).to(torch.float64)
    b = wr.view(torch.float8_e4m3fn).to(torch.float64)
    acc = (a @ b.t()).to(F32)
    out = acc * sx.to(F32)[:, None]
    out = out * sw.to(F32)[None, :]
    if bias is not None:
        out = out + bias.to(F32)
    return out.to(out_dtype)


TWINS.update({"mx_quant_rowwise": twin_mx_quant_rowwise, "fp8_rowwise_gemm": twin_fp8_rowwise_gemm})
