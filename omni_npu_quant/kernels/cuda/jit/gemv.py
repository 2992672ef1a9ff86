"""Small-M (decode, M <= 16) split-K kernels, second generation: MX (packed FP4 / E4M3 weights) and int8.

Why (issue 14): ``decode.py`` decodes every E2M1 code with a chain of selects and multiplies each
element by its E8M0 scale; at M <= 16 that ALU work, not the weight stream, bounds it.  Here:

MX (``mx_gemv``; schemes mxfp4, w4a8_mxfp, mxfp8, mxfp4_dual):

* packed FP4 weights are loaded as int32 words (8 nibbles; tile [BLOCK_N, BLOCK_K/32, 4] words, so a
  thread's vector load holds whole 32-blocks).  GEMV form: nibbles j and j + 4 of a word become two bf16
  bit patterns ``s<<15 | (e1 e0 m)<<6`` in one int32 (two shifts and one masked or for two values), read
  as fp32 (high half as is, low half after a 16-bit shift): exactly ``e2m1 * 2**-126`` (e = 0, m = 1 is
  the fp32 subnormal 2**-127; the compiled PTX uses ``mul.rn.f32`` / ``add.rn.f32`` without ``.ftz``,
  checked for sm90).  The activation bytes are read as int32 words too (FP4: one per weight word; E4M3:
  two) and decoded with ``mx_codec``.  E4M3 weights: hardware fp8 -> fp32 conversion on the GPU (bit
  arithmetic in the interpreter), tile [BLOCK_N, BLOCK_K/32, 2, 16];
* GEMV form (``BLOCK_M <= 4``, no tensor cores): per activation row, products are summed per
  32-element block (``tl.sum``), and the block sum is multiplied once by
  ``2**(cw - 127) * 2**(ca - 127) * 2**bias`` (the two E8M0 block scales and the decode's bias fix, 126
  for FP4 weights, built as fp32 exponent bits in clamped factors; code 255 = NaN as ``numerics.e8m0``).
  Block scales are powers of two, so ``sum(x) * 2**s == sum(x * 2**s)`` whenever nothing
  under/overflows (products of 2**-126-scaled values stay multiples of 2**-136: exact even as subnormals);
* dot form (``BLOCK_M`` 16, also forced with ``dot=True``): weights dequantized per element (FP4 nibble ->
  fp16 bits ``s<<15 | (e1 e0 m)<<9`` = ``e2m1 * 2**-14``, exact after fp16 -> fp32; then the block scale)
  to exact bf16 and one ``tl.dot`` per K tile (fp32 accumulation), as ``decode.py``;
* split-K: programs (N tile, K slice) write fp32 partials (SPLIT, M, N) into a fixed workspace;
  ``decode.splitk_reduce_kernel`` sums them in slice order (deterministic), adds the fp32 bias and
  casts once.  Dual-scale: each 512-chunk partial is multiplied by ``l0x[m, c]`` then ``l0w[n, c]``.

Exactness E1: every product of two MX values is exact in fp32; only the fp32 summation order differs
from ``twins.twin_mx_gemm`` (plus, at the fp32 underflow boundary, where a block sum is scaled: a
block whose scaled products are fp32 subnormals, and results that overflow anyway: a block sum that
cancels before scaling can give +-inf where the reference's inf + -inf gives NaN).  The activation
bytes are the fused quantizer's (``ops.mx_quant`` / ``ops.dual_quant``), so ``quantize_activation`` is
what apply uses.

int8 (``int8_gemv``; w8a8_dynamic per-channel and w8a8_static): split-K; M <= 4 GEMV (int8 loads,
int32 multiply + ``tl.sum``), larger M an int8 ``tl.dot``; int32 partials (exact, so the split does
not change anything) summed by ``int8_reduce_kernel``, whose epilogue is the op sequence of
``triton_kernels.int8_gemm_kernel`` (E0: bit-identical to the reference).  Per-group weight scales
(N_GROUPS > 1) are not handled here: the caller keeps the old GEMM for them (``int8_supported``).

Switch: ``OMNI_NPU_QUANT_CUDA_GEMV=1`` (or backend option ``gemv=True`` / ``"1"``) routes every
M <= 16 call of ``cuda.mx`` and ``cuda.int8_*`` here; unset or ``0``: the previous paths (default,
until the H200 probe ``tools/decode_probe.py`` has numbers).  Configs come from ``MX_CONFIGS`` /
``INT8_CONFIGS`` by M bucket, chosen per (N, K) with plain ints (``plan``, memoised); the split
workspace is one buffer per device, grown outside capture (``reserve``) and shared by all layers
(one stream runs them in order).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .decode import splitk_reduce_kernel
from .launch import fast as _fast
from .mx_codec import PAD_CODE, e2m1_value, e4m3_value

ENV = "OMNI_NPU_QUANT_CUDA_GEMV"
MAX_M = 16
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # fixed at import (interpret.enable() runs before)
_OPTS = {} if _INTERPRETED else {"enable_fp_fusion": False}
_OPTS_T = tuple(_OPTS.items())
_OPT_T: dict = {}


def _opts(nw: int, ns: int | None = None) -> tuple:
    """Launch options as the hashable tuple ``launch.FastKernel`` takes (built once per pair)."""
    o = _OPT_T.get((nw, ns))
    if o is None:
        o = _OPT_T[(nw, ns)] = (("num_warps", nw),) + ((("num_stages", ns),) if ns is not None else ()) + _OPTS_T
    return o
TARGET_PROGRAMS = 4 * 132


def enabled(option=None) -> bool:
    """New small-M path on?  Backend option ``gemv`` wins over ``OMNI_NPU_QUANT_CUDA_GEMV``; default off."""
    v = option if option is not None else os.environ.get(ENV, "0")
    if isinstance(v, bool):
        return v
    v = str(v).strip().lower()
    if v in ("1", "true", "on"):
        return True
    if v in ("0", "false", "off", ""):
        return False
    raise ValueError(f"{ENV} / backend option gemv must be 0 or 1, got {v!r}")


def m_block(m: int) -> int:
    """M -> BLOCK_M (1, 2, 4: GEMV form; 8, 16: tl.dot form)."""
    if m > MAX_M:
        raise ValueError(f"gemv kernels handle M <= {MAX_M}, got M={m}")
    return 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 16


# ---------------------------------------------------------------------------------------------
# MX
# ---------------------------------------------------------------------------------------------
@triton.jit
def _fp4_words_to_f32(wd):
    """int32 words [R, B, W] (8 E2M1 nibbles each, low first) -> fp32 [R, B, W, 8] = e2m1 * 2**-14 (exact)."""
    sh = tl.arange(0, 8) * 4
    nib = (wd[:, :, :, None] >> sh[None, None, None, :]) & 0xF
    bits = ((nib & 7) << 9) | ((nib & 8) << 12)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _fp4_nibbles_f32(wd, J: tl.constexpr):
    """int32 words (8 E2M1 nibbles, low first) -> (nibble J, nibble J + 4) as fp32 = e2m1 * 2**-126 (exact).

    Both nibbles are turned into bf16 bit patterns in one int32 (``s<<15 | (e1 e0 m)<<6`` in each half:
    two shifts and a masked or for two values); the high half is an fp32 as is, the low half after a
    16-bit shift.  e = 0, m = 1 becomes the fp32 subnormal 2**-127 (PTX mul/fma here do not flush)."""
    t = wd >> (4 * J)
    pair = ((t << 6) & 0x01C001C0) | ((t << 12) & -2147450880)  # masks 0x01C001C0, 0x80008000
    hi = (pair & -65536).to(tl.float32, bitcast=True)  # 0xFFFF0000
    lo = (pair << 16).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def _pow2c(e):
    """fp32 2**e for int32 e clamped to [-126, 127] (exact inside)."""
    e = tl.minimum(tl.maximum(e, -126), 127)
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _block_scale(cw, ca, BIAS: tl.constexpr):
    """E8M0 codes (int32) -> fp32 factors (f1, f2) with f1 * f2 = 2**(cw + ca - 254 + BIAS); NaN if 255."""
    e = cw + ca - 254 + BIAS
    e1 = tl.minimum(tl.maximum(e, -126), 127)
    f1 = ((e1 + 127) << 23).to(tl.float32, bitcast=True)
    f2 = _pow2c(e - e1)
    f1 = tl.where((cw == 255) | (ca == 255), float("nan"), f1)
    return f1, f2


@triton.jit
def _block_scale3(cw, ca, BIAS: tl.constexpr):
    """As ``_block_scale`` for exponents up to 3 * 127 (BIAS 126): three clamped factors."""
    e = cw + ca - 254 + BIAS
    e1 = tl.minimum(tl.maximum(e, -126), 127)
    r = e - e1
    e2 = tl.minimum(tl.maximum(r, -126), 127)
    f1 = ((e1 + 127) << 23).to(tl.float32, bitcast=True)
    f1 = tl.where((cw == 255) | (ca == 255), float("nan"), f1)
    return f1, ((e2 + 127) << 23).to(tl.float32, bitcast=True), _pow2c(r - e2)


@triton.jit
def _act_vals(a_ptr, row, k, A_FP4: tl.constexpr, HW8: tl.constexpr):
    """Activation codes of one row at K indices k (any shape) -> exact unscaled fp32 values."""
    if A_FP4:
        p = tl.load(a_ptr + row + k // 2).to(tl.int32)
        v = e2m1_value((p >> ((k & 1) * 4)) & 0xF)
    elif HW8:
        v = tl.load(a_ptr + row + k).to(tl.float32)
    else:
        v = e4m3_value(tl.load(a_ptr + row + k).to(tl.int32))
    return v


@triton.jit
def _kidx(k0, NB: tl.constexpr, W_FP4: tl.constexpr):
    """K indices of NB blocks from k0 in the weight tile's trailing shape: FP4 [NB, 4, 8] (4 int32 words of
    8 nibbles per block), E4M3 [NB, 2, 16] (two 16-byte halves per block)."""
    A: tl.constexpr = 4 if W_FP4 else 2
    B: tl.constexpr = 8 if W_FP4 else 16
    bi = tl.arange(0, NB)
    ai = tl.arange(0, A)
    ji = tl.arange(0, B)
    return k0 + bi[:, None, None] * 32 + ai[None, :, None] * B + ji[None, None, :]


@triton.jit
def _w_vals(w_ptr, rn, nmask, stride_wn, k0, W_FP4: tl.constexpr, HW8: tl.constexpr, NB: tl.constexpr):
    """Weight tile as fp32 [BLOCK_N, NB, 4, 8] (FP4: value * 2**-14) or [BLOCK_N, NB, 2, 16] (E4M3: value).

    The trailing dims hold one 32-block, so a thread's contiguous load (16 bytes) covers whole blocks or
    halves and the per-block sums stay mostly in registers."""
    if W_FP4:  # int32 words: 4 per block; w_ptr is int32, stride in words
        bi = tl.arange(0, NB)
        wi = tl.arange(0, 4)
        offs = rn[:, None, None] * stride_wn + (k0 // 8 + bi * 4)[None, :, None] + wi[None, None, :]
        wd = tl.load(w_ptr + offs, mask=nmask[:, None, None], other=0)
        v = _fp4_words_to_f32(wd)
    else:
        kk = _kidx(k0, NB, False)
        offs = rn[:, None, None, None] * stride_wn + kk[None, :, :, :]
        m4 = nmask[:, None, None, None]
        if HW8:
            v = tl.load(w_ptr + offs, mask=m4, other=0.0).to(tl.float32)
        else:
            v = e4m3_value(tl.load(w_ptr + offs, mask=m4, other=0).to(tl.int32))
    return v


@triton.jit
def _mx_tile(acc, a_ptr, as_ptr, w_ptr, ws_ptr, rm, M, rn, nmask, stride_am, stride_asm, stride_wn, stride_wsn, k0,
             A_FP4: tl.constexpr, W_FP4: tl.constexpr, HW8: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr, DOT_BF16: tl.constexpr):
    NB: tl.constexpr = BLOCK_K // 32
    BIAS: tl.constexpr = 14 if W_FP4 else 0
    bi = tl.arange(0, NB)
    cw = tl.load(ws_ptr + rn[:, None] * stride_wsn + k0 // 32 + bi[None, :], mask=nmask[:, None],
                 other=PAD_CODE).to(tl.int32)  # [BN, NB]
    if DOT:
        # exact dequantized weight (bf16) and activation, one tensor-core dot
        w = _w_vals(w_ptr, rn, nmask, stride_wn, k0, W_FP4, HW8, NB)  # [BN, NB, A, B]
        f1, f2 = _block_scale(cw, tl.full([BLOCK_N, NB], 127, tl.int32), BIAS)
        wd = tl.reshape((w * f1[:, :, None, None]) * f2[:, :, None, None], [BLOCK_N, BLOCK_K])
        kk = k0 + tl.arange(0, BLOCK_K)
        mm = rm < M
        ca = tl.load(as_ptr + rm[:, None] * stride_asm + (kk // 32)[None, :], mask=mm[:, None],
                     other=PAD_CODE).to(tl.int32)
        av = _act_vals(a_ptr, tl.where(mm, rm, 0)[:, None] * stride_am, kk[None, :], A_FP4, HW8)
        af1, af2 = _block_scale(ca, tl.full([BLOCK_M, BLOCK_K], 127, tl.int32), 0)
        ad = (av * af1) * af2
        ad = tl.where(mm[:, None], ad, 0.0)
        if DOT_BF16:
            acc = tl.dot(ad.to(tl.bfloat16), tl.trans(wd.to(tl.bfloat16)), acc)
        else:
            acc = tl.dot(ad, tl.trans(wd), acc)
    elif W_FP4:
        # packed FP4 GEMV: words [BN, NB, 4] stay in their load layout; nibble j and j + 4 of every word
        # decoded two at a time; per-block sums, then one scale per (row, block)
        wi = tl.arange(0, 4)
        offs = rn[:, None, None] * stride_wn + (k0 // 8 + bi * 4)[None, :, None] + wi[None, None, :]
        wd = tl.load(w_ptr + offs, mask=nmask[:, None, None], other=0)
        widx = k0 // 8 + bi[:, None] * 4 + wi[None, :]  # [NB, 4]: word index (8 K positions each)
        for i in tl.static_range(BLOCK_M):
            if i < M:
                # activation as int32 words too (a_ptr is int32 here): FP4 one word, E4M3 two per weight word
                if A_FP4:
                    aw0 = tl.load(a_ptr + i * stride_am + widx)
                    aw1 = aw0
                else:
                    aw0 = tl.load(a_ptr + i * stride_am + 2 * widx)
                    aw1 = tl.load(a_ptr + i * stride_am + 2 * widx + 1)
                part = tl.zeros([BLOCK_N, NB, 4], dtype=tl.float32)
                for j in tl.static_range(4):
                    lo, hi = _fp4_nibbles_f32(wd, j)
                    if A_FP4:
                        a_lo = e2m1_value((aw0 >> (4 * j)) & 0xF)
                        a_hi = e2m1_value((aw1 >> (4 * j + 16)) & 0xF)
                    else:
                        a_lo = e4m3_value((aw0 >> (8 * j)) & 0xFF)
                        a_hi = e4m3_value((aw1 >> (8 * j)) & 0xFF)
                    part = part + lo * a_lo[None, :, :]
                    part = part + hi * a_hi[None, :, :]
                bs = tl.sum(part, axis=2)  # [BN, NB]
                ca = tl.load(as_ptr + i * stride_asm + k0 // 32 + bi).to(tl.int32)
                f1, f2, f3 = _block_scale3(cw, ca[None, :], 126)
                contrib = tl.sum(((bs * f1) * f2) * f3, axis=1)
                acc = tl.where((rm == i)[:, None], acc + contrib[None, :], acc)
    else:
        w = _w_vals(w_ptr, rn, nmask, stride_wn, k0, W_FP4, HW8, NB)  # E4M3: [BN, NB, 2, 16]
        kk3 = _kidx(k0, NB, W_FP4)  # [NB, 2, 16]
        for i in tl.static_range(BLOCK_M):
            if i < M:
                av = _act_vals(a_ptr, i * stride_am, kk3, A_FP4, HW8)  # [NB, A, B]
                ca = tl.load(as_ptr + i * stride_asm + k0 // 32 + bi).to(tl.int32)  # [NB]
                bs = tl.sum(tl.sum(w * av[None, :, :, :], axis=3), axis=2)  # [BN, NB] per-block sums
                f1, f2 = _block_scale(cw, ca[None, :], BIAS)
                contrib = tl.sum((bs * f1) * f2, axis=1)  # [BN]
                acc = tl.where((rm == i)[:, None], acc + contrib[None, :], acc)
    return acc


@triton.jit
def mx_gemv_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, part_ptr, l0x_ptr, l0w_ptr,
                   M, N, KP, K_SLICE, stride_am, stride_asm, stride_wn, stride_wsn, stride_l0x, stride_l0w,
                   A_FP4: tl.constexpr, W_FP4: tl.constexpr, DUAL: tl.constexpr, HW8: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
                   DOT_BF16: tl.constexpr):
    """Program (N tile, K slice): fp32 partial (BLOCK_M x BLOCK_N) into part[pid_k, :M, tile]."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    kbeg = pid_k * K_SLICE
    kend = tl.minimum(kbeg + K_SLICE, KP)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if DUAL:
        for c0 in range(kbeg, kend, 512):
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(c0, c0 + 512, BLOCK_K):
                part = _mx_tile(part, a_ptr, as_ptr, w_ptr, ws_ptr, rm, M, rn, nmask, stride_am, stride_asm,
                                stride_wn, stride_wsn, k0, A_FP4, W_FP4, HW8, BLOCK_M, BLOCK_N, BLOCK_K, DOT,
                                DOT_BF16)
            lx = tl.load(l0x_ptr + rm * stride_l0x + c0 // 512, mask=rm < M, other=0.0)
            lw = tl.load(l0w_ptr + rn * stride_l0w + c0 // 512, mask=nmask, other=0.0)
            part = part * lx[:, None]
            part = part * lw[None, :]
            acc = acc + part
    else:
        for k0 in range(kbeg, kend, BLOCK_K):
            acc = _mx_tile(acc, a_ptr, as_ptr, w_ptr, ws_ptr, rm, M, rn, nmask, stride_am, stride_asm, stride_wn,
                           stride_wsn, k0, A_FP4, W_FP4, HW8, BLOCK_M, BLOCK_N, BLOCK_K, DOT, DOT_BF16)
    p_ptrs = part_ptr + (pid_k * M + rm[:, None]) * N + rn[None, :]
    tl.store(p_ptrs, acc, mask=(rm < M)[:, None] & nmask[None, :])


# ---------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------
@triton.jit
def int8_gemv_kernel(a_ptr, w_ptr, part_ptr, M, N, K, K_SLICE, stride_am, stride_wn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr):
    """Program (N tile, K slice): exact int32 partial (BLOCK_M x BLOCK_N) of A[:, slice] @ W[tile, slice]^T."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    mm = rm < M
    rk = tl.arange(0, BLOCK_K)
    kbeg = pid_k * K_SLICE
    kend = tl.minimum(kbeg + K_SLICE, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(kbeg, kend, BLOCK_K):
        kmask = (k0 + rk) < kend
        w = tl.load(w_ptr + rn[:, None] * stride_wn + (k0 + rk)[None, :], mask=nmask[:, None] & kmask[None, :],
                    other=0)
        if DOT:
            a = tl.load(a_ptr + rm[:, None] * stride_am + (k0 + rk)[None, :], mask=mm[:, None] & kmask[None, :],
                        other=0)
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
        else:
            w32 = w.to(tl.int32)
            for i in tl.static_range(BLOCK_M):
                if i < M:
                    a = tl.load(a_ptr + i * stride_am + k0 + rk, mask=kmask, other=0).to(tl.int32)
                    contrib = tl.sum(w32 * a[None, :], axis=1)
                    acc = tl.where((rm == i)[:, None], acc + contrib[None, :], acc)
    p_ptrs = part_ptr + (pid_k * M + rm[:, None]) * N + rn[None, :]
    tl.store(p_ptrs, acc, mask=mm[:, None] & nmask[None, :])


@triton.jit
def int8_reduce_kernel(part_ptr, out_ptr, sx_ptr, ws_ptr, bias_ptr, qb_ptr, deq_ptr, MN, N, SPLIT,
                       MODE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out = epilogue(sum_s part[s]) with int8_gemm_kernel's op order (MODE 0 dynamic, 1 static)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.load(part_ptr + offs, mask=mask, other=0)
    for s in range(1, SPLIT):
        acc = acc + tl.load(part_ptr + s * MN + offs, mask=mask, other=0)
    n = offs % N
    if MODE == 0:
        accf = acc.to(tl.float32) * tl.load(ws_ptr + n, mask=mask, other=0.0)
        accf = accf * tl.load(sx_ptr + offs // N, mask=mask, other=0.0)
        if HAS_BIAS:
            accf = accf + tl.load(bias_ptr + n, mask=mask, other=0.0)
    else:
        if HAS_BIAS:
            acc = acc + tl.load(qb_ptr + n, mask=mask, other=0)
        accf = acc.to(tl.float32) * tl.load(deq_ptr + n, mask=mask, other=0.0)
    tl.store(out_ptr + offs, accf.to(out_ptr.dtype.element_ty), mask=mask)


# every launch goes through launch.FastKernel (Triton's own launch the first time per specialization)
_MX_GEMV = _fast(mx_gemv_kernel)
_INT8_GEMV = _fast(int8_gemv_kernel)
_INT8_REDUCE = _fast(int8_reduce_kernel)
_SPLITK_REDUCE = _fast(splitk_reduce_kernel)


# ---------------------------------------------------------------------------------------------
# configs, plans, workspace
# ---------------------------------------------------------------------------------------------
# BLOCK_M -> candidate (BLOCK_N, BLOCK_K, num_warps, num_stages); first = default (not yet measured)
MX_CONFIGS = {
    1: [(64, 256, 4, 3), (32, 512, 4, 3), (128, 128, 4, 3)],
    2: [(64, 256, 4, 3), (32, 512, 4, 3), (128, 128, 4, 3)],
    4: [(64, 256, 4, 3), (32, 256, 4, 3), (128, 128, 8, 3)],
    16: [(64, 128, 4, 3), (128, 128, 4, 3), (64, 256, 8, 3)],
}
INT8_CONFIGS = {
    1: [(64, 256, 4, 3), (32, 512, 4, 3), (128, 128, 4, 3)],
    2: [(64, 256, 4, 3), (32, 512, 4, 3), (128, 128, 4, 3)],
    4: [(64, 256, 4, 3), (32, 256, 4, 3), (128, 128, 8, 3)],
    16: [(64, 256, 4, 3), (32, 256, 4, 3), (128, 128, 4, 3)],
}
_PLANS: dict = {}
_WS: dict = {}


def split_for(n_tiles: int, k: int, unit: int) -> tuple[int, int]:
    """-> (K slice length, number of slices) for about TARGET_PROGRAMS programs (slices are unit multiples)."""
    units = -(-k // unit)
    want = max(1, min(units, -(-TARGET_PROGRAMS // n_tiles)))
    per = -(-units // want)
    return per * unit, -(-units // per)


def plan(kind: str, n: int, k: int, bm: int, dual: bool = False, cfg=None):
    """(kind 'mx' | 'int8', N, K (padded for MX), BLOCK_M) -> (BLOCK_N, BLOCK_K, warps, stages, K slice, split).
    ``cfg`` overrides the table's first entry (the probe compares them)."""
    key = (kind, n, k, bm, dual, cfg)
    p = _PLANS.get(key)
    if p is None:
        table = MX_CONFIGS if kind == "mx" else INT8_CONFIGS
        c = cfg or table[bm][0]
        bn, bk, nw, ns = c
        if kind == "mx":
            if k % 32:
                raise ValueError(f"mx_gemv: padded K must be a multiple of 32, got {k}")
            while k % bk or (dual and 512 % bk):
                bk //= 2
            if bk < 32:
                raise ValueError(f"mx_gemv: no K tile divides K={k}")
        ks, split = split_for(-(-n // bn), k, 512 if dual else bk)
        p = (bn, bk, nw, ns, ks, split)
        _PLANS[key] = p
    return p


def _workspace(device, nbytes: int) -> torch.Tensor:
    """One byte buffer per device for the split partials (grown if too small; call ``reserve`` before capture)."""
    key = str(device)
    buf = _WS.get(key)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8, device=device)
        _WS[key] = buf
    return buf


def reserve(device, n: int, k: int, dual: bool = False, kind: str = "mx") -> None:
    """Grow the shared workspace for a layer (N, K) at every M <= 16 (prepare time: no allocation later)."""
    need = 0
    for bm in MX_CONFIGS:
        split = plan(kind, n, k, bm, dual)[5]
        need = max(need, split * MAX_M * n * 4)
    _workspace(device, need)


def mx_gemv(a_q, a_s, w_q, w_s, n, kp, out_dtype, a_fp4: bool, w_fp4: bool, *, bias=None, l0x=None, l0w=None,
            cfg=None, dot=None):
    """Same contract as ``ops.mx_gemm`` / ``decode.mx_gemm_decode`` for M <= 16 (raw uint8 storage bytes).
    ``cfg`` (BLOCK_N, BLOCK_K, warps, stages) and ``dot`` (force the tl.dot / GEMV form) are for tests and the probe."""
    m = a_q.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a_q.device)
    if m == 0:
        return out
    bm = m_block(m)
    use_dot = bm > 4 if dot is None else bool(dot)
    if use_dot:
        bm = 16
    dual = l0x is not None
    bn, bk, nw, ns, ks, split = plan("mx", n, kp, bm, dual, cfg)
    hw8 = not _INTERPRETED
    if w_fp4 and not use_dot:  # packed-FP4 GEMV form reads the activation bytes as int32 words
        if a_q.shape[1] % 4 or a_q.stride(0) % 4 or a_q.data_ptr() % 4 or a_q.stride(1) != 1:
            raise ValueError("mx_gemv: activation rows must be contiguous and 4-byte aligned")
        a_t = a_q.view(torch.uint8).view(torch.int32)
    else:
        a_t = a_q.view(torch.uint8) if a_fp4 or not hw8 else a_q.view(torch.float8_e4m3fn)
    if w_fp4:
        if w_q.shape[1] % 4 or w_q.stride(0) % 4 or w_q.data_ptr() % 4:
            raise ValueError("mx_gemv: packed FP4 weight rows must be 4-byte aligned (Kp % 8 == 0)")
        w_t = w_q.view(torch.uint8).view(torch.int32)
    else:
        w_t = w_q.view(torch.uint8) if not hw8 else w_q.view(torch.float8_e4m3fn)
    part = _workspace(a_q.device, split * m * n * 4)[: split * m * n * 4].view(torch.float32)
    # launches through launch.FastKernel: every parameter positionally, in signature order
    _MX_GEMV((-(-n // bn), split), (
        a_t, a_s, w_t, w_s, part, l0x if dual else a_s, l0w if dual else a_s,
        m, n, kp, ks, a_t.stride(0), a_s.stride(0), w_t.stride(0), w_s.stride(0),
        l0x.stride(0) if dual else 0, l0w.stride(0) if dual else 0,
        a_fp4, w_fp4, dual, hw8, bm, bn, bk, use_dot, hw8), _opts(nw, ns))
    mn = m * n
    _SPLITK_REDUCE((-(-mn // 1024),), (part, bias if bias is not None else part, out, mn, n, split, bias is not None,
                                       1024), _opts(4))
    return out


def int8_supported(n_groups: int) -> bool:
    return n_groups == 1


def int8_gemv(q, w, out_dtype, *, sx=None, ws=None, bias=None, quant_bias=None, deq=None, static: bool = False,
              cfg=None, dot=None):
    """Same contract (and bits) as ``ops.int8_gemm`` for M <= 16 and one weight-scale group."""
    m, k = q.shape
    n = w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"int8_gemv: activation K={k} but weight K={w.shape[1]}")
    if not static and ws is not None and ws.numel() != n:
        raise ValueError("int8_gemv handles per-channel weight scales only (one group); use ops.int8_gemm")
    out = torch.empty((m, n), dtype=out_dtype, device=q.device)
    if m == 0:
        return out
    bm = m_block(m)
    use_dot = bm > 4 if dot is None else bool(dot)
    if use_dot:
        bm = 16
    bn, bk, nw, ns, ks, split = plan("int8", n, k, bm, False, cfg)
    part = _workspace(q.device, split * m * n * 4)[: split * m * n * 4].view(torch.int32)
    _INT8_GEMV((-(-n // bn), split), (q, w, part, m, n, k, ks, q.stride(0), w.stride(0), bm, bn, bk, use_dot),
               _opts(nw, ns))
    mn = m * n
    has_bias = (quant_bias is not None) if static else (bias is not None)
    dummy = part
    _INT8_REDUCE((-(-mn // 1024),), (part, out, sx if sx is not None else dummy, ws if ws is not None else dummy,
                                     bias if bias is not None else dummy,
                                     quant_bias if quant_bias is not None else dummy,
                                     deq if deq is not None else dummy, mn, n, split, 1 if static else 0, has_bias,
                                     1024), _opts(4))
    return out


__all__ = ["mx_gemv", "int8_gemv", "enabled", "plan", "reserve", "MX_CONFIGS", "INT8_CONFIGS", "ENV", "MAX_M"]
