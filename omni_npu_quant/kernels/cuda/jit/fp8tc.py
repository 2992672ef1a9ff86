"""FP8-tensor-core MX path for SM90 (imported lazily; needs ``triton``).

SM90 has no MX tensor-core instruction, but E2M1 is a subset of E4M3 and E8M0 scales are powers of
two, so an MX operand row can be moved onto the E4M3 grid with one fp32 scale per row:
``value * 2**(e_block - S_row)`` rounded to E4M3 (RNE), row scale ``2**S_row``.  The GEMM is then a
rowwise-scaled FP8 GEMM on the FP8 tensor cores (``tl.dot`` of float8e4nv, fp32 accumulation with
promotion to the fp32 accumulator every ``PROMOTE`` K elements), epilogue ``acc * sx[m] * sw[n] + bias``.

Exactness (stated per element, checked by ``twins.rowwise_rescale``): an E2M1 row is exact when its
non-zero blocks span at most 14 binades (S_row = largest block exponent - 6); an E4M3 row is exact
when no element of a lower block falls below the E4M3 subnormal grid after the shift.  Otherwise the
lost bits are below 2**-9 of the row's largest block scale (about 2**-17 of the row's largest
|value|).  Together with the tensor cores' reduced-precision accumulation inside ``PROMOTE`` this
path is E2: within rtol 1e-3 of the reference (as op-plugin's MX matmul tests), not bit-identical.

``mx_quant_rowwise_kernel`` is one program per row, two passes over K: pass 1 finds the row exponent
(the largest block exponent among blocks whose input |max| is not 0, minus the headroom),
pass 2 writes the row-rescaled E4M3 bytes and (``WRITE_MX``) the MX bytes and E8M0 codes, computed by
the same jit helpers as ``triton_kernels.mx_quant_kernel`` (identical bytes).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ....numerics.constants import E2M1, ElemFormat
from .launch import fast as _fast
from .triton_kernels import (_e2m1_code, _e4m3_code, _grouped_tile, _mx_block_exponent, _mx_elements, _pow2,
                             P2M64)

_ROUND = {"rint": 0, "round": 1, "floor": 2}


@triton.jit
def _row_pass_values(x_ptr, sm_ptr, row, offs, K, stride_xm, HAS_SMOOTH: tl.constexpr):
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0)
    if HAS_SMOOTH:  # non-fused smoothing: rounded to the activation dtype (schemes.base.apply_mul_scale)
        sm = tl.load(sm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = (x.to(tl.float32) * sm).to(x.dtype)
    return x.to(tl.float32)


@triton.jit
def mx_quant_rowwise_kernel(x_ptr, sm_ptr, q_ptr, sc_ptr, xr_ptr, sx_ptr, K, KP, stride_xm, stride_qm, stride_sm,
                            stride_rm, HAS_SMOOTH: tl.constexpr, IS_FP8: tl.constexpr, EMAX: tl.constexpr,
                            EMIN: tl.constexpr, MBITS: tl.constexpr, MAXV: tl.constexpr, ROUND: tl.constexpr,
                            SCALE_ALG: tl.constexpr, HEADROOM: tl.constexpr, WRITE_MX: tl.constexpr,
                            NB: tl.constexpr):
    """Row -> row-rescaled E4M3 bytes (KP) + fp32 row scale, and (WRITE_MX) MX q bytes + E8M0 codes."""
    row = tl.program_id(0)
    base = tl.arange(0, NB)[:, None] * 32 + tl.arange(0, 32)[None, :]
    emax_row = tl.full([NB], -100000, tl.int32)
    nan_row = tl.zeros([NB], tl.int32)
    for k0 in range(0, KP, NB * 32):
        x = _row_pass_values(x_ptr, sm_ptr, row, k0 + base, K, stride_xm, HAS_SMOOTH)
        amax_bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)
        e, nan_scale, code = _mx_block_exponent(amax_bits, EMAX, MAXV, SCALE_ALG, IS_FP8, 0x400000)
        emax_row = tl.maximum(emax_row, tl.where(amax_bits != 0, tl.minimum(e, 127), -100000))
        nan_row = nan_row | nan_scale.to(tl.int32)
    em = tl.max(emax_row, axis=0)
    s_row = tl.where(em > -100000, em - HEADROOM, 0)
    is_nan = tl.max(nan_row, axis=0) != 0
    for k0 in range(0, KP, NB * 32):
        offs = k0 + base
        x = _row_pass_values(x_ptr, sm_ptr, row, offs, K, stride_xm, HAS_SMOOTH)
        amax_bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)
        e, nan_scale, code = _mx_block_exponent(amax_bits, EMAX, MAXV, SCALE_ALG, IS_FP8, 0x400000)
        q = _mx_elements(x, e[:, None], nan_scale[:, None], EMIN, MBITS, MAXV, ROUND)
        if WRITE_MX:
            blk = k0 // 32 + tl.arange(0, NB)
            tl.store(sc_ptr + row * stride_sm + blk, code.to(tl.uint8))
            if IS_FP8:
                tl.store(q_ptr + row * stride_qm + offs, _e4m3_code(q))
            else:
                c = tl.reshape(_e2m1_code(q), [NB, 16, 2])
                lo, hi = tl.split(c)
                poffs = k0 // 2 + tl.arange(0, NB)[:, None] * 16 + tl.arange(0, 16)[None, :]
                tl.store(q_ptr + row * stride_qm + poffs, (lo | (hi << 4)).to(tl.uint8))
        shift = tl.minimum(tl.maximum(tl.minimum(e, 127) - s_row, -64), HEADROOM)  # above: NaN-scale blocks
        v = q * _pow2(shift)[:, None]
        # round onto the E4M3 grid with the MX element rounding (block exponent 0, RNE, saturating)
        r = _mx_elements(v, tl.zeros([NB, 1], tl.int32), tl.zeros([NB, 1], tl.int1), -6, 3, 448.0, 0)
        tl.store(xr_ptr + row * stride_rm + offs, _e4m3_code(r))
    scale = tl.where(s_row >= -126, _pow2(tl.maximum(s_row, -126)), _pow2(tl.maximum(s_row + 64, -126)) * P2M64)
    scale = tl.where(is_nan, float("nan"), scale)
    tl.store(sx_ptr + row, scale)


@triton.jit
def fp8_rowwise_gemm_kernel(a_ptr, w_ptr, sx_ptr, sw_ptr, bias_ptr, out_ptr, M, N, KP, stride_am, stride_wn,
                            stride_om, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PROMOTE: tl.constexpr):
    """out[m, n] = (sum_k a[m, k] w[n, k]) * sx[m] * sw[n] (+ bias[n]); a, w float8e4nv, KP % BLOCK_K == 0."""
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
    for k0 in range(0, KP, BLOCK_K):
        a = tl.load(a_ptrs + k0)
        w = tl.load(w_ptrs + k0)
        acc = tl.dot(a, w, acc, max_num_imprecise_acc=PROMOTE)
    acc = acc * tl.load(sx_ptr + rm_c)[:, None]
    acc = acc * tl.load(sw_ptr + rn_c)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn_c)[None, :]
    o_ptrs = out_ptr + rm[:, None] * stride_om + rn[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_ROWWISE = _fast(mx_quant_rowwise_kernel)
_FP8_GEMM = _fast(fp8_rowwise_gemm_kernel)


def _opt_tuple(num_warps, num_stages, launch_opts) -> tuple:
    return (("num_warps", num_warps),) + ((("num_stages", num_stages),) if num_stages is not None else ()) + \
        tuple((launch_opts or {}).items())


def _interp() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def mx_quant_rowwise(x2: torch.Tensor, smooth, fmt: ElemFormat, round_mode: str, scale_alg: int, kp: int, *,
                     write_mx: bool = True, launch_opts=None):
    """(M, K) -> (MX q bytes or None, codes or None, E4M3 bytes (M, kp) uint8, row scale fp32 (M,))."""
    m, k = x2.shape
    if kp % 256:
        raise ValueError(f"padded K must be a multiple of 256, got {kp}")
    dev = x2.device
    q = torch.empty((m, kp if fmt.bits == 8 else kp // 2), dtype=torch.uint8, device=dev) if write_mx else None
    sc = torch.empty((m, kp // 32), dtype=torch.uint8, device=dev) if write_mx else None
    xr = torch.empty((m, kp), dtype=torch.uint8, device=dev)
    sx = torch.empty((m,), dtype=torch.float32, device=dev)
    if m:
        _ROWWISE((m,), (
            x2, smooth if smooth is not None else x2, q if write_mx else xr, sc if write_mx else xr, xr, sx, k, kp,
            x2.stride(0), q.stride(0) if write_mx else 0, sc.stride(0) if write_mx else 0, xr.stride(0),
            smooth is not None, fmt.bits == 8, fmt.emax, fmt.emin, fmt.mbits, float(fmt.max_value), _ROUND[round_mode],
            scale_alg, 6 if fmt is E2M1 else 0, write_mx, 32 if kp % 1024 == 0 else 8), _opt_tuple(4, None, launch_opts))
    return q, sc, xr, sx


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, PROMOTE); first = default per M bucket
FP8_TABLE = {
    16: [(16, 64, 256, 1, 4, 4, 128), (16, 128, 128, 1, 4, 4, 128), (32, 64, 256, 1, 4, 4, 128)],
    64: [(64, 64, 256, 4, 4, 4, 128), (64, 128, 128, 4, 4, 4, 128)],
    256: [(64, 128, 128, 8, 4, 4, 128), (128, 128, 128, 8, 8, 4, 128), (128, 64, 128, 8, 4, 4, 128)],
    1024: [(128, 128, 128, 8, 8, 4, 128), (128, 256, 128, 8, 8, 3, 128), (128, 128, 256, 8, 8, 3, 256)],
    4096: [(128, 256, 128, 8, 8, 3, 128), (128, 128, 128, 8, 8, 4, 128), (256, 128, 128, 8, 8, 3, 128),
           (128, 256, 128, 8, 8, 4, 128), (128, 256, 256, 8, 8, 2, 256)],
}


def fp8_rowwise_gemm(xr, sx, wr, sw, n, kp, out_dtype, *, bias=None, pick=None, m_bucket=None, launch_opts=None,
                     out=None, tuned=None):
    """E4M3 (M, kp) x E4M3 (N, kp) with fp32 row scales -> (M, N) out_dtype."""
    m = xr.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=xr.device)
    if m == 0:
        return out
    a = xr.view(torch.float8_e4m3fn)
    w = wr.view(torch.float8_e4m3fn)
    mb = m_bucket(m) if m_bucket else 4096
    opts = launch_opts or {}

    def run(cfg):
        bm, bn, bk, gm, nw, ns, pr = cfg
        _FP8_GEMM((-(-m // bm) * -(-n // bn),), (
            a, w, sx, sw, bias if bias is not None else sx, out, m, n, kp, a.stride(0), w.stride(0), out.stride(0),
            bias is not None, bm, bn, bk, gm, min(pr, bk)), _opt_tuple(nw, ns, opts))

    pk = ("fp8tc", mb, n, kp)
    cfg = tuned.get(pk) if tuned is not None else None  # ``pick``'s own cache: no candidate list per call
    if cfg is None:
        cands = [c for c in FP8_TABLE[mb] if kp % c[2] == 0] or [(16, 64, 64, 1, 4, 3, 64)]
        cfg = cands[0] if pick is None else pick(pk, cands, run)
    run(cfg)
    return out


__all__ = ["mx_quant_rowwise", "fp8_rowwise_gemm", "FP8_TABLE"]
