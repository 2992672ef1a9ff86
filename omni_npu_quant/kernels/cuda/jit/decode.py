"""Small-M (decode, M <= 16) MX GEMM: split-K, weights streamed in their stored 4 / 8 bits.

Why a separate kernel: on SM90 ``tl.dot_scaled`` has no MX tensor-core instruction and upcasts
both operands inside the K loop; at M <= 16 that conversion, not the weight stream, bounds the
time.  This kernel instead

* loads a (BLOCK_N x BLOCK_K) tile of the stored weight bytes (packed FP4, two codes per byte low
  nibble first, or E4M3 bytes) with plain coalesced loads;
* decodes each code with integer bit arithmetic into fp32 bits (E2M1: magnitudes 0, 0.5 and
  ``2**(e-1) * (1 + m/2)`` built from the exponent/mantissa bits; E4M3: normal values by moving
  the fields, subnormals as ``m * 2**-9``, 0x7F/0xFF NaN) and multiplies by the E8M0 block scale
  ``2**(c-127)`` built directly as fp32 exponent bits (255 = NaN, as ``numerics.e8m0``);
* does the same for the already quantized activation (bytes produced by the fused quantizer in
  ``kernels.py``, untouched), and
* runs one bf16 ``tl.dot`` per K tile with fp32 accumulation.  Every dequantized operand
  ``dec(q) * 2**e`` has at most 4 significant bits and a normal fp32 exponent, so it is exact in
  bf16 and each product is exact; only the fp32 summation order differs from the reference
  (E1, the same contract as ``kernels.mx_gemm_kernel``).

Split-K: programs (N tile, K slice) write fp32 partials (SPLIT, M, N); a second small kernel sums
them in a fixed order (deterministic), adds the fp32 bias and casts once.  Dual-scale: each
512-chunk's partial is multiplied by ``l0x[m, c]`` then ``l0w[n, c]`` before it is added, as
``numerics.gemm.dual_level_matmul``.

Dispatch (``enabled``): ``OMNI_NPU_QUANT_CUDA_DECODE=1`` routes every M <= 16 MX GEMM here, ``=0`` none;
unset, only MXFP8-weight layers with N * Kp >= 8192 * 8192 (the one case where it was measured
faster than the ``tl.dot_scaled`` kernel; the FP4 decode in this kernel is still ALU-bound).  ``cuda.mx``
decides once per layer at prepare (``ops.mx_gemm(..., decode=p.decode)``); only a direct ``ops.mx_gemm``
call without ``decode`` reads the variable per call.  Launches go through ``launch.py``'s fast launcher and
the config of a shape is looked up in the caller's tuned dict before any candidate list is built (host
time per call: issue 14).
The second-generation small-M kernels (cheaper E2M1 decode, per-block scaling, GEMV form, int8) are in
``gemv.py``, opt-in through ``OMNI_NPU_QUANT_CUDA_GEMV=1``; this kernel stays selectable beside them.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .launch import fast as _fast
from .mx_codec import PAD_CODE, e2m1_value, e4m3_value, e8m0_scale, unpack_e2m1

ENV = "OMNI_NPU_QUANT_CUDA_DECODE"
MAX_M = 16
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # fixed at import (interpret.enable() runs before)


# Auto policy (measured on an H200, 2026-11-21, docs/performance.md): the decode kernel beat the
# tl.dot_scaled path only for E4M3 weights on large layers; for packed FP4 weights it was slower.
AUTO_MIN_ELEMS = 8192 * 8192


def enabled(w_fp4: bool = False, n: int = 0, kp: int = 0) -> bool:
    """Use this kernel for an M <= 16 MX GEMM?  OMNI_NPU_QUANT_CUDA_DECODE=1 always, =0 never;
    unset ("auto"): only E4M3 weights with N * Kp >= AUTO_MIN_ELEMS."""
    return policy(os.environ.get(ENV, "auto"), w_fp4, n, kp)


def policy(env: str, w_fp4: bool, n: int, kp: int) -> bool:
    """``enabled`` for a given value of OMNI_NPU_QUANT_CUDA_DECODE (``"auto"`` when unset)."""
    if env == "0":
        return False
    if env == "1":
        return True
    return not w_fp4 and n * kp >= AUTO_MIN_ELEMS


@triton.jit
def _load_mx_tile(ptr, s_ptr, rows, rmask, stride, stride_s, k0, FP4: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK_K: tl.constexpr, DOT_BF16: tl.constexpr, VARIANT: tl.constexpr, HW8: tl.constexpr):
    """Stored MX rows [ROWS] at K offset k0 -> exact dequantized values as bf16 [ROWS, BLOCK_K]
    (fp32 when not DOT_BF16: Triton 3.6's interpreter mis-evaluates bf16 ``tl.dot``).

    VARIANT (same values, different register layouts): 0 = packed bytes + ``tl.interleave``, scales
    broadcast through a [ROWS, BLOCK_K/32, 32] reshape; 1 = interleave, scales gathered per element
    (index k // 32, served by L1); 2 = bytes and scales both gathered per element (no interleave).
    """
    kk = k0 + tl.arange(0, BLOCK_K)
    if FP4:
        if VARIANT == 2:
            p = tl.load(ptr + rows[:, None] * stride + (kk // 2)[None, :], mask=rmask[:, None], other=0).to(tl.int32)
            v = e2m1_value((p >> ((kk & 1) * 4)[None, :]) & 0xF)
        else:
            kb = tl.arange(0, BLOCK_K // 2)
            p = tl.load(ptr + rows[:, None] * stride + (k0 // 2 + kb)[None, :], mask=rmask[:, None],
                        other=0).to(tl.int32)
            v = e2m1_value(unpack_e2m1(p))  # low nibble first
    else:
        if HW8:  # hardware E4M3 conversion (the pointer is float8e4nv)
            v = tl.load(ptr + rows[:, None] * stride + kk[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
        else:
            p = tl.load(ptr + rows[:, None] * stride + kk[None, :], mask=rmask[:, None], other=0).to(tl.int32)
            v = e4m3_value(p)
    if VARIANT == 0:
        ks = tl.arange(0, BLOCK_K // 32)
        c = tl.load(s_ptr + rows[:, None] * stride_s + (k0 // 32 + ks)[None, :], mask=rmask[:, None], other=PAD_CODE)
        sc = e8m0_scale(c.to(tl.int32))
        v = tl.reshape(tl.reshape(v, [ROWS, BLOCK_K // 32, 32]) * sc[:, :, None], [ROWS, BLOCK_K])
    else:
        c = tl.load(s_ptr + rows[:, None] * stride_s + (kk // 32)[None, :], mask=rmask[:, None], other=PAD_CODE)
        v = v * e8m0_scale(c.to(tl.int32))
    if DOT_BF16:
        v = v.to(tl.bfloat16)
    return v


@triton.jit
def _tile_mma(acc, a_ptr, as_ptr, w_ptr, ws_ptr, rm, mmask, rn, nmask, M, stride_am, stride_asm, stride_wn,
              stride_wsn, k0, A_FP4: tl.constexpr, W_FP4: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              DOT_BF16: tl.constexpr, VARIANT: tl.constexpr, HW8: tl.constexpr):
    """acc [16, BLOCK_N] += A[:, k0:k0+BLOCK_K] @ W[rn, k0:k0+BLOCK_K]^T (exact products, fp32 sums).

    VARIANT 3: no tensor cores: per activation row an fp32 multiply + row reduction (GEMV; for tiny M)."""
    if VARIANT == 3:
        w = _load_mx_tile(w_ptr, ws_ptr, rn, nmask, stride_wn, stride_wsn, k0, W_FP4, BLOCK_N, BLOCK_K, False, 1, HW8)
        for i in range(0, M):
            ri = i + tl.arange(0, 1)
            a = _load_mx_tile(a_ptr, as_ptr, ri, ri < M, stride_am, stride_asm, k0, A_FP4, 1, BLOCK_K, False, 1, HW8)
            contrib = tl.sum(w * a, axis=1)
            acc = tl.where((rm == i)[:, None], acc + contrib[None, :], acc)
    else:
        a = _load_mx_tile(a_ptr, as_ptr, rm, mmask, stride_am, stride_asm, k0, A_FP4, 16, BLOCK_K, DOT_BF16, VARIANT,
                          HW8)
        w = _load_mx_tile(w_ptr, ws_ptr, rn, nmask, stride_wn, stride_wsn, k0, W_FP4, BLOCK_N, BLOCK_K, DOT_BF16,
                          VARIANT, HW8)
        acc = tl.dot(a, tl.trans(w), acc)
    return acc


@triton.jit
def mx_decode_splitk_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, part_ptr, l0x_ptr, l0w_ptr,
                            M, N, KP, K_SLICE, stride_am, stride_asm, stride_wn, stride_wsn, stride_l0x, stride_l0w,
                            A_FP4: tl.constexpr, W_FP4: tl.constexpr, DUAL: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_BF16: tl.constexpr,
                            VARIANT: tl.constexpr, HW8: tl.constexpr):
    """Program (N tile, K slice): fp32 partial (16 x BLOCK_N) of A[:, slice] @ W[tile, slice]^T."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, 16)
    mmask = rm < M
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    kbeg = pid_k * K_SLICE
    kend = tl.minimum(kbeg + K_SLICE, KP)
    acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
    if DUAL:
        for c0 in range(kbeg, kend, 512):
            part = tl.zeros([16, BLOCK_N], dtype=tl.float32)
            for k0 in range(c0, c0 + 512, BLOCK_K):
                part = _tile_mma(part, a_ptr, as_ptr, w_ptr, ws_ptr, rm, mmask, rn, nmask, M, stride_am, stride_asm,
                                 stride_wn, stride_wsn, k0, A_FP4, W_FP4, BLOCK_N, BLOCK_K, DOT_BF16, VARIANT, HW8)
            lx = tl.load(l0x_ptr + rm * stride_l0x + c0 // 512, mask=mmask, other=0.0)
            lw = tl.load(l0w_ptr + rn * stride_l0w + c0 // 512, mask=nmask, other=0.0)
            part = part * lx[:, None]
            part = part * lw[None, :]
            acc = acc + part
    else:
        for k0 in range(kbeg, kend, BLOCK_K):
            acc = _tile_mma(acc, a_ptr, as_ptr, w_ptr, ws_ptr, rm, mmask, rn, nmask, M, stride_am, stride_asm,
                            stride_wn, stride_wsn, k0, A_FP4, W_FP4, BLOCK_N, BLOCK_K, DOT_BF16, VARIANT, HW8)
    p_ptrs = part_ptr + (pid_k * M + rm[:, None]) * N + rn[None, :]
    tl.store(p_ptrs, acc, mask=mmask[:, None] & nmask[None, :])


@triton.jit
def splitk_reduce_kernel(part_ptr, bias_ptr, out_ptr, MN, N, SPLIT, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out = (sum_s part[s] in order s = 0, 1, ...) + bias, cast once to the output dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in range(1, SPLIT):
        acc = acc + tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs % N, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# (BLOCK_N, BLOCK_K, num_warps, num_stages, VARIANT); first = default
DECODE_TABLE = [(128, 128, 4, 3, 0), (128, 128, 4, 3, 1), (128, 128, 4, 3, 2), (64, 256, 4, 3, 1), (64, 256, 4, 3, 2),
                (128, 256, 8, 2, 1), (128, 256, 8, 2, 2), (256, 128, 8, 2, 1), (32, 256, 4, 3, 1)]
# GEMV variant (no tensor cores), only tried for M <= GEMV_MAX_M
GEMV_TABLE = [(64, 256, 4, 3, 3), (32, 512, 4, 3, 3), (128, 128, 4, 3, 3), (16, 1024, 4, 2, 3)]
GEMV_MAX_M = 4
TARGET_PROGRAMS = 4 * 132


def _split(n_tiles: int, kp: int, unit: int) -> tuple[int, int]:
    """-> (K slice length, number of slices) for about TARGET_PROGRAMS programs."""
    units = kp // unit
    want = max(1, min(units, -(-TARGET_PROGRAMS // n_tiles)))
    per = -(-units // want)
    split = -(-units // per)
    return per * unit, split


# every launch goes through launch.FastKernel (Triton's own launch the first time per specialization)
_DECODE = _fast(mx_decode_splitk_kernel)
_REDUCE = _fast(splitk_reduce_kernel)
_OPT_T: dict = {}


def _opt_tuple(nw: int, ns: int | None, extra: tuple) -> tuple:
    """Launch options as the hashable tuple ``launch.FastKernel`` takes (built once per triple)."""
    o = _OPT_T.get((nw, ns, extra))
    if o is None:
        o = _OPT_T[(nw, ns, extra)] = (("num_warps", nw),) + ((("num_stages", ns),) if ns is not None else ()) + extra
    return o


_PLANS: dict = {}  # (cfg, n, kp, dual) -> (n_tiles, K slice, split)


def _plan(cfg, n: int, kp: int, dual: bool):
    key = (cfg, n, kp, dual)
    pl = _PLANS.get(key)
    if pl is None:
        n_tiles = -(-n // cfg[0])
        pl = _PLANS[key] = (n_tiles,) + _split(n_tiles, kp, 512 if dual else cfg[1])
    return pl


def mx_gemm_decode(a_q, a_s, w_q, w_s, n, kp, out_dtype, a_fp4: bool, w_fp4: bool, *, bias=None, l0x=None,
                   l0w=None, pick=None, launch_opts=None, tuned=None):
    """Same contract as ``ops.mx_gemm`` for M <= 16 (a_q / w_q raw uint8 storage bytes).

    ``pick(key, candidates, run)`` chooses a config (default: the first candidate); ``tuned`` is the dict ``pick``
    stores its choices in (``ops._TUNED``): a key found there is used without building the candidates."""
    m = a_q.shape[0]
    if m > MAX_M:
        raise ValueError(f"decode kernel handles M <= {MAX_M}, got M={m}")
    out = torch.empty((m, n), dtype=out_dtype, device=a_q.device)
    if m == 0:
        return out
    dual = l0x is not None
    hw8 = not _INTERPRETED  # E4M3 bytes as float8e4nv for the hardware conversion
    a_u8 = a_q.view(torch.uint8) if a_fp4 or not hw8 else a_q.view(torch.float8_e4m3fn)
    w_u8 = w_q.view(torch.uint8) if w_fp4 or not hw8 else w_q.view(torch.float8_e4m3fn)
    extra = tuple(launch_opts.items()) if launch_opts else ()
    dev = a_q.device

    def run(cfg):
        bn, bk, nw, ns, var = cfg
        n_tiles, ks, split = _plan(cfg, n, kp, dual)
        part = torch.empty((split, m, n), dtype=torch.float32, device=dev)
        _DECODE((n_tiles, split), (
            a_u8, a_s, w_u8, w_s, part, l0x if dual else a_s, l0w if dual else a_s,
            m, n, kp, ks, a_u8.stride(0), a_s.stride(0), w_u8.stride(0), w_s.stride(0),
            l0x.stride(0) if dual else 0, l0w.stride(0) if dual else 0,
            a_fp4, w_fp4, dual, bn, bk, hw8, var, hw8), _opt_tuple(nw, ns, extra))
        mn = m * n
        _REDUCE((-(-mn // 1024),), (part, bias if bias is not None else part, out, mn, n, split, bias is not None,
                                    1024), _opt_tuple(4, None, extra))

    key = ("mx_decode", a_fp4, w_fp4, dual, min(m, GEMV_MAX_M + 1), n, kp)
    cfg = tuned.get(key) if tuned is not None else None
    if cfg is None:  # candidates built only when the key has no config yet
        table = DECODE_TABLE + (GEMV_TABLE if m <= GEMV_MAX_M else [])
        cands = [c for c in table if kp % c[1] == 0 and (not dual or 512 % c[1] == 0)] or [(32, 64, 4, 2, 1)]
        cfg = cands[0] if pick is None else pick(key, cands, run)
    run(cfg)
    return out


__all__ = ["mx_gemm_decode", "enabled", "policy", "MAX_M", "DECODE_TABLE", "ENV"]
