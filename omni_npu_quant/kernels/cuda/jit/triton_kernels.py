"""Triton kernels of the CUDA mirror backend (imported lazily: needs ``triton``).

Every kernel here has a pure-torch twin in ``twins.py`` built from ``omni_npu_quant.numerics``;
the GPU tests compare them byte for byte (quantizers) or to the stated tolerance (GEMMs).

Bit-exactness notes (the rules themselves live in ``numerics``; these kernels only restate the
same arithmetic in Triton):

* |max| reductions run on the fp32 bit patterns (``bits & 0x7FFFFFFF`` is monotone in |x| and a
  NaN's pattern is above Inf's), so a NaN propagates exactly as ``torch.amax`` does and no
  flush-to-zero mode can touch a subnormal.
* Division by a power of two is a multiplication by its exact inverse; the only true divisions
  (``127/amax``, ``amax/448`` for RCEIL, ``amax/6`` and ``x/l0`` of dual-level) use
  ``tl.math.div_rn`` (IEEE round to nearest), never the approximate ``/``.
* Rounding to an integer uses the fp32 magic-number trick on the magnitude
  (``(a + 1.5*2**23) - 1.5*2**23`` is round-half-even for ``a < 2**22``), sign re-applied
  bitwise: no libdevice call, so ``-0`` and ties behave as ``torch.round``.
* Kernels are launched with ``enable_fp_fusion=False`` so that ``a*b + c`` stays two roundings,
  as in the reference.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .mx_codec import e2m1_value, e8m0_scale, unpack_e2m1

MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23
INV127 = tl.constexpr(1.0 / 127.0)  # becomes fp32(1/127) in the kernel, as numerics.int8._INV_127
P2M64 = tl.constexpr(2.0 ** -64)
P2M63 = tl.constexpr(2.0 ** -63)


# ---------------------------------------------------------------------------------------------
# scalar helpers (inlined)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile column), GROUP_M row tiles per column sweep (L2 reuse)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    gsz = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % group) % gsz, (pid % group) // gsz


@triton.jit
def _pow2(e):
    """Exact fp32 2**e for int32 e in [-126, 127]."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _rint_mag(a):
    """Round-half-even of a non-negative fp32 a < 2**22."""
    return (a + MAGIC) - MAGIC


@triton.jit
def _with_sign(mag, sign_bits):
    """|mag| with the sign bit ``sign_bits`` (int32, 0 or 0x80000000 as int)."""
    return (mag.to(tl.int32, bitcast=True) | sign_bits).to(tl.float32, bitcast=True)


@triton.jit
def _round_elem(m, ROUND: tl.constexpr):
    """Round fp32 m (|m| small) like ``numerics.elements.round_mantissa``; ROUND 0 rint, 1 round, 2 floor."""
    mb = m.to(tl.int32, bitcast=True)
    sign = mb & (-2147483648)
    a = (mb & 0x7FFFFFFF).to(tl.float32, bitcast=True)
    if ROUND == 0:
        r = _rint_mag(a)
        out = _with_sign(r, sign)
    elif ROUND == 1:
        t = a + 0.5
        r = _rint_mag(t)
        r = tl.where(r > t, r - 1.0, r)  # floor(t) for t >= 0
        out = _with_sign(r, sign)
    else:
        r = _rint_mag(a)
        fl = tl.where(r > a, r - 1.0, r)  # floor(a)
        ce = tl.where(r < a, r + 1.0, r)  # ceil(a)
        out = tl.where(sign != 0, _with_sign(ce, sign), fl)
    return out


@triton.jit
def _mx_block_exponent(amax_bits, EMAX: tl.constexpr, MAXV: tl.constexpr, SCALE_ALG: tl.constexpr,
                       IS_FP8: tl.constexpr, UOS_MANT: tl.constexpr):
    """numerics.e8m0.shared_exponent on |max| bit patterns -> (E clamped for use, code uint8)."""
    ef = ((amax_bits >> 23) & 0xFF) - 127
    if SCALE_ALG == 1 and IS_FP8:
        s = tl.math.div_rn(amax_bits.to(tl.float32, bitcast=True), MAXV)
        sb = s.to(tl.int32, bitcast=True)
        eb = (sb >> 23) & 0xFF
        mb = sb & 0x7FFFFF
        up = ((eb > 0) & (eb < 254) & (mb > 0)) | ((eb == 0) & (mb > 4194304))
        e = eb + up.to(tl.int32) - 127
    elif SCALE_ALG == 2:
        up = (amax_bits & 0x7FFFFF) > UOS_MANT
        e = ef + up.to(tl.int32) - EMAX
    else:
        e = ef - EMAX
    e = tl.where(amax_bits == 0, -127, e)
    e = tl.maximum(e, -127)
    nan_scale = (amax_bits >= 0x7F800000) | (e > 127)
    code = tl.where(nan_scale, 255, e + 127)
    return e, nan_scale, code


@triton.jit
def _mx_elements(x, e, nan_scale, EMIN: tl.constexpr, MBITS: tl.constexpr, MAXV: tl.constexpr,
                 ROUND: tl.constexpr):
    """fp32 x [.., 32] and its block exponent e [.., 1] -> exact element values (fp32)."""
    xb = x.to(tl.int32, bitcast=True)
    sign = xb & (-2147483648)
    xexp = (xb >> 23) & 0xFF
    ec = tl.minimum(e, 126)  # scales above 2**126 never occur for finite blocks
    v_norm = x * _pow2(-ec)
    # fp32 subnormal x = m * 2**-149: scale the integer mantissa directly (no FTZ exposure)
    mant = xb & 0x7FFFFF
    sub_mult = _pow2(tl.minimum(tl.maximum(-149 - ec, -126), 127))
    v_sub = _with_sign(mant.to(tl.float32) * sub_mult, sign)
    # the clamp at 2**-126 keeps v_sub nonzero where fp32's x * 2**-ec underflows to a signed zero (ec >= 1 and
    # mant * 2**-ec <= 1/2, round half to even); v's magnitude is far below every element grid here, so only that
    # zero matters ("floor" of a negative tiny v is -1, of -0 it is -0: numerics.elements, the reference)
    under = (ec >= 1) & (mant.to(tl.float32) <= _pow2(tl.minimum(tl.maximum(ec - 1, 0), 24)))
    v_sub = tl.where(under, _with_sign(tl.zeros_like(v_sub), sign), v_sub)
    v = tl.where(xexp == 0, v_sub, v_norm)
    vb = v.to(tl.int32, bitcast=True)
    pe = ((vb >> 23) & 0xFF) - 127
    pe = tl.minimum(tl.maximum(pe, EMIN), 127)
    m = v * _pow2(MBITS - pe)
    r = _round_elem(m, ROUND)
    q = r * _pow2(pe - MBITS)
    q = tl.minimum(tl.maximum(q, -MAXV), MAXV)
    q = tl.where(nan_scale, 0.0, q)
    return q


@triton.jit
def _e4m3_code(q):
    """Exact E4M3 value (fp32) -> uint8 code."""
    qb = q.to(tl.int32, bitcast=True)
    sign = (qb >> 24) & 0x80
    a = (qb & 0x7FFFFFFF).to(tl.float32, bitcast=True)
    ab = qb & 0x7FFFFFFF
    fe = ((ab >> 23) & 0xFF) - 127
    normal = ((fe + 7) << 3) | ((ab >> 20) & 7)
    sub = (a * 512.0).to(tl.int32)
    code = tl.where(fe >= -6, normal, sub)
    code = tl.where(ab == 0, 0, code)
    return (code | sign).to(tl.uint8)


@triton.jit
def _e2m1_code(q):
    """Exact E2M1 value (fp32) -> 4-bit code (int32)."""
    qb = q.to(tl.int32, bitcast=True)
    sign = (qb >> 28) & 0x8
    ab = qb & 0x7FFFFFFF
    a = ab.to(tl.float32, bitcast=True)
    fe = ((ab >> 23) & 0xFF) - 127
    normal = ((fe + 1) << 1) | ((ab >> 22) & 1)
    small = (a * 2.0).to(tl.int32)
    idx = tl.where(a >= 1.0, normal, small)
    return idx | sign


# ---------------------------------------------------------------------------------------------
# int8 quantizers
# ---------------------------------------------------------------------------------------------
@triton.jit
def int8_dynamic_quant_kernel(x_ptr, sm_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
                              HAS_SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row: numerics.int8.dynamic_quant_int8 (optionally with fused smoothing)."""
    row = tl.program_id(0)
    amax_bits = tl.zeros([BLOCK], dtype=tl.int32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        mask = offs < K
        x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SMOOTH:
            x = x * tl.load(sm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        amax_bits = tl.maximum(amax_bits, x.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
    ab = tl.max(amax_bits, axis=0)
    a = ab.to(tl.float32, bitcast=True)
    inv = tl.where(ab == 0, 0.0, tl.math.div_rn(tl.full([], 127.0, tl.float32), a))
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        mask = offs < K
        x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SMOOTH:
            x = x * tl.load(sm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = x * inv
        p = tl.where(p != p, 0.0, p)
        p = tl.minimum(tl.maximum(p, -128.0), 128.0)
        r = _round_elem(p, 0)
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        tl.store(q_ptr + row * stride_qm + offs, r.to(tl.int8), mask=mask)
    tl.store(s_ptr + row, a * INV127)


@triton.jit
def int8_static_quant_kernel(x_ptr, sm_ptr, scale_ptr, offset_ptr, q_ptr, numel, K,
                             HAS_SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    """numerics.int8.static_quant_int8 after the non-fused smoothing (rounded to the act dtype)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_SMOOTH:
        sm = tl.load(sm_ptr + offs % K, mask=mask, other=0.0).to(tl.float32)
        x = (x.to(tl.float32) * sm).to(x.dtype)
    s = tl.load(scale_ptr).to(tl.float32)
    o = tl.load(offset_ptr).to(tl.float32)
    v = x.to(tl.float32) * s
    v = v + o
    v = tl.where(v != v, 0.0, v)
    v = tl.minimum(tl.maximum(v, -129.0), 128.0)
    r = _round_elem(v, 0)
    r = tl.minimum(tl.maximum(r, -128.0), 127.0)
    tl.store(q_ptr + offs, r.to(tl.int8), mask=mask)


# ---------------------------------------------------------------------------------------------
# MX quantizers
# ---------------------------------------------------------------------------------------------
@triton.jit
def mx_quant_kernel(x_ptr, sm_ptr, q_ptr, sc_ptr, deq_ptr, K, stride_xm, stride_qm, stride_sm, stride_dm,
                    HAS_SMOOTH: tl.constexpr, IS_FP8: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr,
                    MBITS: tl.constexpr, MAXV: tl.constexpr, ROUND: tl.constexpr, SCALE_ALG: tl.constexpr,
                    UOS_MANT: tl.constexpr, WRITE_Q: tl.constexpr, WRITE_DEQ: tl.constexpr,
                    NB: tl.constexpr):
    """Program (row, chunk of NB 32-blocks): numerics.mx.mx_quantize + storage encoding.

    Writes (WRITE_Q) e4m3 bytes (M, Kp) or packed FP4 (M, Kp/2) and E8M0 codes (M, Kp/32);
    and/or (WRITE_DEQ) the exact dequantized values in bf16 (M, Kp) for the bf16-GEMM path.
    Columns in [K, Kp) are zero-padded blocks (code 0, value 0), as numerics.mx pads.
    """
    row = tl.program_id(0)
    kb = tl.program_id(1)
    offs = kb * (NB * 32) + tl.arange(0, NB)[:, None] * 32 + tl.arange(0, 32)[None, :]
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0)
    if HAS_SMOOTH:  # non-fused smoothing: rounded to the activation dtype (schemes.base.apply_mul_scale)
        sm = tl.load(sm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = (x.to(tl.float32) * sm).to(x.dtype)
    x = x.to(tl.float32)
    amax_bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)
    e, nan_scale, code = _mx_block_exponent(amax_bits, EMAX, MAXV, SCALE_ALG, IS_FP8, UOS_MANT)
    q = _mx_elements(x, e[:, None], nan_scale[:, None], EMIN, MBITS, MAXV, ROUND)
    blk = kb * NB + tl.arange(0, NB)
    if WRITE_Q:
        tl.store(sc_ptr + row * stride_sm + blk, code.to(tl.uint8))
        if IS_FP8:
            tl.store(q_ptr + row * stride_qm + offs, _e4m3_code(q))
        else:
            c = _e2m1_code(q)
            c = tl.reshape(c, [NB, 16, 2])
            lo, hi = tl.split(c)
            packed = (lo | (hi << 4)).to(tl.uint8)
            poffs = kb * (NB * 16) + tl.arange(0, NB)[:, None] * 16 + tl.arange(0, 16)[None, :]
            tl.store(q_ptr + row * stride_qm + poffs, packed)
    if WRITE_DEQ:
        s = tl.where(nan_scale, float("nan"), _pow2(tl.minimum(tl.maximum(e, -126), 127)))
        # e == -127: 2**-127 is subnormal, apply it as 2**-64 * 2**-63
        dq = tl.where((e == -127)[:, None], (q * P2M64) * P2M63, q * s[:, None])
        tl.store(deq_ptr + row * stride_dm + offs, dq.to(tl.bfloat16))


@triton.jit
def dual_quant_kernel(x_ptr, sm_ptr, q_ptr, sc_ptr, l0_ptr, K, stride_xm, stride_qm, stride_sm, stride_lm,
                      HAS_SMOOTH: tl.constexpr, ROUND: tl.constexpr, ROUND_WORK: tl.constexpr):
    """Program (row, 512-chunk): numerics.mx_dual.dual_level_quantize, packed FP4 + codes + l0."""
    row = tl.program_id(0)
    c = tl.program_id(1)
    offs = c * 512 + tl.arange(0, 16)[:, None] * 32 + tl.arange(0, 32)[None, :]
    x_raw = tl.load(x_ptr + row * stride_xm + offs)
    x = x_raw.to(tl.float32)
    if HAS_SMOOTH:  # fused smoothing: fp32 product, smooth given in the activation dtype
        x = x * tl.load(sm_ptr + offs).to(tl.float32)
    ab = tl.max(tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1), axis=0)
    amax = ab.to(tl.float32, bitcast=True)
    l0 = tl.math.div_rn(amax, tl.full([], 6.0, tl.float32))
    t = tl.math.div_rn(x, tl.zeros_like(x) + l0)
    t = tl.where(l0 == 0.0, 0.0, t)
    if ROUND_WORK:  # t is rounded to the activation dtype (bf16/fp16), round to nearest even
        t = t.to(x_raw.dtype).to(tl.float32)
    amax_bits = tl.max(t.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)
    e, nan_scale, code = _mx_block_exponent(amax_bits, 2, 6.0, 0, False, 0)
    q = _mx_elements(t, e[:, None], nan_scale[:, None], 0, 1, 6.0, ROUND)
    tl.store(sc_ptr + row * stride_sm + c * 16 + tl.arange(0, 16), code.to(tl.uint8))
    cc = tl.reshape(_e2m1_code(q), [16, 16, 2])
    lo, hi = tl.split(cc)
    poffs = c * 256 + tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]
    tl.store(q_ptr + row * stride_qm + poffs, (lo | (hi << 4)).to(tl.uint8))
    tl.store(l0_ptr + row * stride_lm + c, l0)


# ---------------------------------------------------------------------------------------------
# GEMMs
# ---------------------------------------------------------------------------------------------
@triton.jit
def int8_gemm_kernel(a_ptr, w_ptr, out_ptr, sx_ptr, ws_ptr, bias_ptr, qb_ptr, deq_ptr,
                     M, N, K, stride_am, stride_wn, stride_om, stride_wsn,
                     MODE: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP_K: tl.constexpr, N_GROUPS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """int8 x int8 -> int32 (exact), fused NPU epilogue.

    MODE 0 (dynamic): out = sum_g fp32(acc_g) * ws[n, g]  (left to right), then * sx[m], + bias[n].
    MODE 1 (static):  out = fp32(acc + quant_bias[n]) * deq[n]   (quant_bias only if HAS_BIAS).
    """
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    mask_n = rn < N
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :]
    w_ptrs = w_ptr + rn[None, :] * stride_wn + rk[:, None]
    accf = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for g in range(N_GROUPS):
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for kk in range(0, GROUP_K, BLOCK_K):
            k0 = g * GROUP_K + kk
            kmask = (k0 + rk) < K
            a = tl.load(a_ptrs + k0, mask=mask_m[:, None] & kmask[None, :], other=0)
            w = tl.load(w_ptrs + k0, mask=mask_n[None, :] & kmask[:, None], other=0)
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        if MODE == 0:
            ws = tl.load(ws_ptr + rn * stride_wsn + g, mask=mask_n, other=0.0)
            part = acc.to(tl.float32) * ws[None, :]
            if N_GROUPS == 1:
                accf = part
            else:
                accf = accf + part
        else:
            if HAS_BIAS:
                acc = acc + tl.load(qb_ptr + rn, mask=mask_n, other=0)[None, :]
            accf = acc.to(tl.float32) * tl.load(deq_ptr + rn, mask=mask_n, other=0.0)[None, :]
    if MODE == 0:
        accf = accf * tl.load(sx_ptr + rm, mask=mask_m, other=0.0)[:, None]
        if HAS_BIAS:
            accf = accf + tl.load(bias_ptr + rn, mask=mask_n, other=0.0)[None, :]
    o_ptrs = out_ptr + rm[:, None] * stride_om + rn[None, :]
    tl.store(o_ptrs, accf.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def mx_gemm_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, out_ptr, bias_ptr, l0x_ptr, l0w_ptr,
                   M, N, Kp, stride_am, stride_asm, stride_wn, stride_wsn, stride_om, stride_l0x, stride_l0w,
                   A_FMT: tl.constexpr, W_FMT: tl.constexpr, DUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """Block-scaled GEMM with tl.dot_scaled (exact products, fp32 accumulation).

    a: e4m3 (M, Kp) or packed e2m1 (M, Kp/2), scales (M, Kp/32); w: (N, Kp) or (N, Kp/2), scales
    (N, Kp/32).  DUAL: each 512-chunk accumulates into its own fp32 partial, then
    out += partial * l0x[m, c] * l0w[n, c] (numerics.gemm.dual_level_matmul).
    """
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    rm_c = tl.where(mask_m, rm, 0)
    rn_c = tl.where(mask_n, rn, 0)
    A_DIV: tl.constexpr = 2 if A_FMT == "e2m1" else 1
    W_DIV: tl.constexpr = 2 if W_FMT == "e2m1" else 1
    ka = tl.arange(0, BLOCK_K // A_DIV)
    kw = tl.arange(0, BLOCK_K // W_DIV)
    ks = tl.arange(0, BLOCK_K // 32)
    a_ptrs = a_ptr + rm_c[:, None] * stride_am + ka[None, :]
    w_ptrs = w_ptr + rn_c[None, :] * stride_wn + kw[:, None]
    as_ptrs = as_ptr + rm_c[:, None] * stride_asm + ks[None, :]
    ws_ptrs = ws_ptr + rn_c[:, None] * stride_wsn + ks[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if DUAL:
        for c in range(0, Kp // 512):
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for kk in range(0, 512, BLOCK_K):
                k0 = c * 512 + kk
                a = tl.load(a_ptrs + k0 // A_DIV)
                w = tl.load(w_ptrs + k0 // W_DIV)
                sa = tl.load(as_ptrs + k0 // 32)
                sw = tl.load(ws_ptrs + k0 // 32)
                part = tl.dot_scaled(a, sa, tl.constexpr(A_FMT), w, sw, tl.constexpr(W_FMT), part)
            lx = tl.load(l0x_ptr + rm_c * stride_l0x + c)
            lw = tl.load(l0w_ptr + rn_c * stride_l0w + c)
            part = part * lx[:, None]
            part = part * lw[None, :]
            acc = acc + part
    else:
        for k0 in range(0, Kp, BLOCK_K):
            a = tl.load(a_ptrs + k0 // A_DIV)
            w = tl.load(w_ptrs + k0 // W_DIV)
            sa = tl.load(as_ptrs + k0 // 32)
            sw = tl.load(ws_ptrs + k0 // 32)
            acc = tl.dot_scaled(a, sa, tl.constexpr(A_FMT), w, sw, tl.constexpr(W_FMT), acc)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=mask_n, other=0.0)[None, :]
    o_ptrs = out_ptr + rm[:, None] * stride_om + rn[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def mx_weight_dequant_kernel(w_ptr, ws_ptr, out_ptr, K, stride_wn, stride_wsn, stride_on,
                             W_FP4: tl.constexpr, NB: tl.constexpr):
    """Stored MX weight row chunk -> exact bf16 values dec(w) * 2**e (bf16-GEMM prefill path)."""
    row = tl.program_id(0)
    kb = tl.program_id(1)
    blk = kb * NB + tl.arange(0, NB)
    offs = kb * (NB * 32) + tl.arange(0, NB)[:, None] * 32 + tl.arange(0, 32)[None, :]
    s = e8m0_scale(tl.load(ws_ptr + row * stride_wsn + blk).to(tl.int32))
    if W_FP4:
        poffs = kb * (NB * 16) + tl.arange(0, NB)[:, None] * 16 + tl.arange(0, 16)[None, :]
        val = e2m1_value(unpack_e2m1(tl.load(w_ptr + row * stride_wn + poffs).to(tl.int32)))
    else:
        val = tl.load(w_ptr + row * stride_wn + offs).to(tl.float32)
    dq = val * s[:, None]
    tl.store(out_ptr + row * stride_on + offs, dq.to(tl.bfloat16))
