"""Dual-scale MXFP4 (``mxfp4_dual``) on the SM90 FP8 tensor cores (imported lazily; needs ``triton``).

The dual-scale product is ``y[m, n] = sum_c (sum_{k in c} a1[m, k] b1[n, k]) * a0[m, c] * b0[n, c]`` over
512-chunks ``c`` (``numerics.gemm.dual_level_matmul``; ``a1`` / ``b1`` the exact level-1 MX values, ``a0`` /
``b0`` the fp32 level-0 scales).  Each (row, 512-chunk) of an operand is moved onto the E4M3 grid exactly as
``jit/fp8tc.py`` moves a row (the chunk viewed as a row of 512): element ``v * 2**(e_block - S)`` rounded to E4M3
(RNE, saturating), ``S`` = the largest exponent of a block holding a non-zero value - 6 (E2M1 headroom).  The
chunk's fp32 scale is ``2**S * l0`` (NaN if a block scale is NaN).  The GEMM is then an FP8 GEMM with
per-(row, chunk) scales on both operands: ``acc += dot_fp8(a_c, w_c) * sa[:, c] * sw[:, c]`` at every 512 boundary
(fp32 promotion per chunk; ``PROMOTE`` inside a chunk), then ``+ bias``, stored in the output dtype.

Activation side: ``ops.dual_quant`` (cuda.mx's dual quantizer, the bytes ``quantize_activation`` reports,
identical to the reference), then ``chunk_rescale_kernel`` reads its packed E2M1 bytes, E8M0 codes and level-0
scales and writes the chunk-rescaled E4M3 operand and the per-(row, chunk) scales.  ``twin_chunk_rescale`` /
``twin_dual_quant_chunkwise`` / ``twin_fp8_chunk_gemm`` are the pure-torch twins (``numerics`` and torch only).

Exactness: a chunk is exact on the E4M3 grid when its non-zero blocks span at most 14 binades (after the level-0
division the largest block has exponent 0, so blocks below 2**-14 lose bits; the loss is below 2**-9 of the
chunk's largest block scale).  With the tensor cores' reduced-precision accumulation inside ``PROMOTE`` this is
E2: within rtol 1e-3 of the reference output scale (+ 1 ulp of the output dtype), not bit-identical.

Tested: in Triton's interpreter on the CPU only (tests/backends/cuda/test_fp8tc_dual_cpu.py: rescale bytes
identical to the twin, GEMM vs twin, the kernel vs the reference backend) and on an H200
(tests/backends/cuda/test_fp8tc_dual_gpu.py, all passed on 2026-12-02).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....numerics.constants import DUAL_L0_BLOCK, E2M1
from .fp8tc import _opt_tuple
from .launch import fast as _fast
from .mx_codec import e2m1_value
from .triton_kernels import P2M64, _e4m3_code, _grouped_tile, _mx_elements, _pow2
from .twins import rowwise_headroom

F32 = torch.float32
CHUNK = DUAL_L0_BLOCK  # 512: level-0 block = the GEMM's scale chunk
HEADROOM = rowwise_headroom(E2M1)  # 6: E2M1 max 6 * 2**6 = 384 <= 448 (the rule lives in twins)


@triton.jit
def chunk_rescale_kernel(q_ptr, sc_ptr, l0_ptr, xr_ptr, s_ptr, stride_qm, stride_sm, stride_lm, stride_rm,
                         stride_sr, stride_sc, HEADROOM: tl.constexpr):
    """Program (row, 512-chunk): packed E2M1 (256 bytes) + 16 E8M0 codes + l0 -> 512 E4M3 bytes + fp32 scale."""
    row = tl.program_id(0)
    c = tl.program_id(1)
    j = tl.arange(0, 16)[:, None] * 32 + tl.arange(0, 32)[None, :]  # element index inside the chunk [16, 32]
    b = tl.load(q_ptr + row * stride_qm + c * 256 + j // 2).to(tl.int32)
    v = e2m1_value((b >> ((j & 1) * 4)) & 0xF)  # low nibble = even element
    code = tl.load(sc_ptr + row * stride_sm + c * 16 + tl.arange(0, 16)).to(tl.int32)
    e = tl.minimum(code - 127, 127)  # code 255 (NaN scale): its elements are 0, it never sets S
    nonzero = tl.max((v != 0.0).to(tl.int32), axis=1) != 0
    em = tl.max(tl.where(nonzero, e, -100000), axis=0)
    s = tl.where(em > -100000, em - HEADROOM, 0)
    shift = tl.minimum(tl.maximum(e - s, -64), HEADROOM)
    w = v * _pow2(shift)[:, None]
    # round onto the E4M3 grid with the MX element rounding (block exponent 0, RNE, saturating)
    r = _mx_elements(w, tl.zeros([16, 1], tl.int32), tl.zeros([16, 1], tl.int1), -6, 3, 448.0, 0)
    tl.store(xr_ptr + row * stride_rm + c * 512 + j, _e4m3_code(r))
    scale = tl.where(s >= -126, _pow2(tl.maximum(s, -126)), _pow2(tl.maximum(s + 64, -126)) * P2M64)
    scale = tl.where(tl.max((code == 255).to(tl.int32), axis=0) != 0, float("nan"), scale)
    l0 = tl.load(l0_ptr + row * stride_lm + c)
    tl.store(s_ptr + row * stride_sr + c * stride_sc, scale * l0)


@triton.jit
def fp8_chunk_gemm_kernel(a_ptr, w_ptr, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, KP, stride_am, stride_wn, stride_om,
                          stride_sam, stride_sac, stride_swn, stride_swc, HAS_BIAS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                          PROMOTE: tl.constexpr):
    """out[m, n] = sum_c (sum_{k in c} a[m, k] w[n, k]) * sa[m, c] * sw[n, c] (+ bias[n]); a, w float8e4nv,
    c the 512-chunks of KP (KP % 512 == 0, 512 % BLOCK_K == 0)."""
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    rm_c = tl.where(mask_m, rm, 0)
    rn_c = tl.where(mask_n, rn, 0)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm_c[:, None] * stride_am + rk[None, :]
    w_ptrs = w_ptr + rn_c[None, :] * stride_wn + rk[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c in range(0, KP // 512):
        part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for kk in range(0, 512, BLOCK_K):
            k0 = c * 512 + kk
            a = tl.load(a_ptrs + k0)
            w = tl.load(w_ptrs + k0)
            part = tl.dot(a, w, part, max_num_imprecise_acc=PROMOTE)
        sa = tl.load(sa_ptr + rm_c * stride_sam + c * stride_sac)
        sw = tl.load(sw_ptr + rn_c * stride_swn + c * stride_swc)
        acc = acc + (part * sa[:, None]) * sw[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn_c)[None, :]
    o_ptrs = out_ptr + rm[:, None] * stride_om + rn[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_RESCALE = _fast(chunk_rescale_kernel)
_GEMM = _fast(fp8_chunk_gemm_kernel)


def chunk_rescale(q, codes, l0, *, launch_opts=None):
    """Dual quantizer outputs (packed E2M1 (M, K/2), codes (M, K/32), l0 (M, K/512)) -> (E4M3 bytes (M, K) uint8,
    per-(row, chunk) fp32 scales (M, K/512), stored chunk-major: a (K/512, M) buffer seen transposed)."""
    m, nc = l0.shape
    xr = torch.empty((m, nc * CHUNK), dtype=torch.uint8, device=q.device)
    sa = torch.empty((nc, m), dtype=F32, device=q.device).t()  # (M, nc), stride (1, M): coalesced per chunk
    if m and nc:
        _RESCALE((m, nc), (q, codes, l0, xr, sa, q.stride(0), codes.stride(0), l0.stride(0), xr.stride(0),
                           sa.stride(0), sa.stride(1), HEADROOM), _opt_tuple(4, None, launch_opts))
    return xr, sa


def dual_quant_chunkwise(x2, smooth, round_mode: str, *, launch_opts=None):
    """(M, K) activation -> (MX q bytes, codes, l0 as ``ops.dual_quant``, E4M3 bytes (M, K), scales (M, K/512))."""
    from .ops import dual_quant

    q, codes, l0 = dual_quant(x2, smooth, round_mode)
    xr, sa = chunk_rescale(q, codes, l0, launch_opts=launch_opts)
    return q, codes, l0, xr, sa


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, PROMOTE) per M bucket: jit/fp8tc.py's FP8 table
# (its rowwise GEMM's configs; none tuned for this kernel yet), restricted to BLOCK_K dividing 512
def _table():
    from .fp8tc import FP8_TABLE

    return {mb: [c for c in cfgs if CHUNK % c[2] == 0] for mb, cfgs in FP8_TABLE.items()}


_TABLE: dict = {}


def fp8_chunk_gemm(xr, sa, wr, sw, n, kp, out_dtype, *, bias=None, pick=None, m_bucket=None, launch_opts=None,
                   out=None, tuned=None):
    """E4M3 (M, kp) x E4M3 (N, kp) with fp32 per-(row, 512-chunk) scales sa (M, kp/512), sw (N, kp/512)
    -> (M, N) out_dtype."""
    if kp % CHUNK:
        raise ValueError(f"fp8_chunk_gemm: padded K must be a multiple of {CHUNK}, got {kp}")
    m = xr.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=xr.device)
    if m == 0:
        return out
    a = xr.view(torch.float8_e4m3fn)
    w = wr.view(torch.float8_e4m3fn)
    mb = m_bucket(m) if m_bucket else 4096
    opts = launch_opts or {}
    if not _TABLE:
        _TABLE.update(_table())

    def run(cfg):
        bm, bn, bk, gm, nw, ns, pr = cfg
        _GEMM((-(-m // bm) * -(-n // bn),), (
            a, w, sa, sw, bias if bias is not None else sa, out, m, n, kp, a.stride(0), w.stride(0), out.stride(0),
            sa.stride(0), sa.stride(1), sw.stride(0), sw.stride(1), bias is not None, bm, bn, bk, gm, min(pr, bk)),
            _opt_tuple(nw, ns, opts))

    pk = ("fp8tc_dual", mb, n, kp)
    cfg = tuned.get(pk) if tuned is not None else None
    if cfg is None:
        cands = _TABLE.get(mb) or [(16, 64, 128, 1, 4, 3, 128)]
        cfg = cands[0] if pick is None else pick(pk, cands, run)
    run(cfg)
    return out


# ---------------------------------------------------------------------------------------------
# pure-torch twins (numerics + torch only)
# ---------------------------------------------------------------------------------------------
def twin_chunk_rescale(q, codes, l0):
    """Stored dual-scale MX (packed E2M1 (R, K/2), codes (R, K/32), l0 (R, K/512)) -> (E4M3 bytes (R, K),
    per-(row, chunk) scales 2**S * l0 (R, K/512) fp32, exact (R, K/512) bool): ``twins.rowwise_weight`` on the
    (R * K/512, 512) view, level 0 folded in.  Used for the weight at prepare and as the activation twin."""
    from . import twins

    r, nc = l0.shape
    if r * nc == 0:
        return (torch.zeros((r, nc * CHUNK), dtype=torch.uint8, device=q.device),
                torch.zeros((r, nc), dtype=F32, device=q.device), torch.zeros((r, nc), dtype=torch.bool,
                                                                            device=q.device))
    wr, s, exact = twins.rowwise_weight(q.reshape(r * nc, CHUNK // 2), codes.reshape(r * nc, CHUNK // 32), CHUNK,
                                        E2M1)
    return wr.reshape(r, nc * CHUNK), s.reshape(r, nc) * l0.to(F32), exact.reshape(r, nc)


def twin_dual_quant_chunkwise(x2, smooth, round_mode: str):
    """What ``dual_quant_chunkwise`` returns, from ``twins.twin_dual_quant`` (numerics.mx_dual)."""
    from . import twins

    q, codes, l0 = twins.twin_dual_quant(x2, smooth, round_mode)
    xr, sa, _ = twin_chunk_rescale(q, codes, l0)
    return q, codes, l0, xr, sa


def twin_fp8_chunk_gemm(xr, sa, wr, sw, out_dtype, *, bias=None):
    """float64 sums per 512-chunk, then fp32 ``acc += (part * sa[:, c]) * sw[:, c]`` in chunk order, + bias."""
    a = xr.view(torch.float8_e4m3fn).to(torch.float64)
    b = wr.view(torch.float8_e4m3fn).to(torch.float64)
    out = torch.zeros((a.shape[0], b.shape[0]), dtype=F32, device=a.device)
    for c in range(a.shape[1] // CHUNK):
        sl = slice(c * CHUNK, (c + 1) * CHUNK)
        part = (a[:, sl] @ b[:, sl].t()).to(F32)
        out = out + (part * sa[:, c].to(F32)[:, None]) * sw[:, c].to(F32)[None, :]
    if bias is not None:
        out = out + bias.to(F32)
    return out.to(out_dtype)


TWINS = {"chunk_rescale": twin_chunk_rescale, "dual_quant_chunkwise": twin_dual_quant_chunkwise,
         "fp8_chunk_gemm": twin_fp8_chunk_gemm}

__all__ = ["chunk_rescale", "dual_quant_chunkwise", "fp8_chunk_gemm", "twin_chunk_rescale",
           "twin_dual_quant_chunkwise", "twin_fp8_chunk_gemm", "TWINS"]
