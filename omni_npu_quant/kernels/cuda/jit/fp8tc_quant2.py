"""Activation quantizer "v2" of ``cuda.mx_fp8tc``, its default since 2026-12-02 (issue 14; imported lazily; needs
``triton``).

Same outputs as ``fp8tc.mx_quant_rowwise`` (quantizer "v1", opt-in: ``fp8tc_quant="v1"`` or
``OMNI_NPU_QUANT_FP8TC_QUANT=v1``): MX bytes + E8M0 codes (``WRITE_MX``), the row-rescaled E4M3 bytes the FP8 GEMM
reads and the fp32 row scale, byte for byte as ``twins.twin_mx_quant_rowwise``.  Chosen per layer at prepare; its
GPU tests (``test_fp8tc_gpu.py::test_v2_*``) passed on the H200 on 2026-12-02 (docs/cuda.md).

``mx_quant_rowwise_kernel`` quantizes ROWS rows per program over chunks of NB 32-element blocks (the
plan, ``rowwise_plan``, is chosen per layer at prepare from Kp and the SM count; per call only the rows per
program follow M).  When the padded row fits one chunk (``SINGLE``) it is read once: block |max|, block
exponents, row exponent and every output come from the same registers.  Otherwise pass 1 finds the row
exponent (the exponent of the row |max|, minus the headroom) and pass 2 re-reads the chunk (from L2: a
program holds at most ``ROW_BUDGET`` elements between the passes) and writes every output.  Chunks need not
divide Kp: loads are masked at K, stores at Kp.  The MX element values and codes come from the same jit
helpers as ``triton_kernels.mx_quant_kernel``, except two roundings done by the FP8 convert
(``.to(tl.float8e4nv)``: ``cvt.rn.satfinite.e4m3x2.f32`` on SM90, round-half-even, saturating at 448): the
re-rounding of the shifted element values onto E4M3, and, on the apply path (no MX bytes), the E4M3 elements of
``x * 2**-e`` (FP8 activations, "rint").  With the MX bytes those come from ``_mx_elements`` / ``_e4m3_code``
instead: the FP8 round trip there was miscompiled by ptxas (see ``_rows_emit``).  Triton's interpreter models
the convert through torch (``interpret.py``); ``tools/fp8tc_quant_probe.py --check-sass`` checks the SASS.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....numerics.constants import E2M1, E4M3, ElemFormat
from .fp8tc import _opt_tuple
from .launch import fast as _fast
from .triton_kernels import _e2m1_code, _e4m3_code, _mx_block_exponent, _mx_elements, _pow2, P2M64

_ROUND = {"rint": 0, "round": 1, "floor": 2}


@triton.jit
def _rows_values(x_ptr, sm_ptr, xrow, rmask, cols, K, HAS_SMOOTH: tl.constexpr):
    """x[rows, cols] as fp32 [ROWS, NB, 32]; 0 for rows >= M and columns >= K (the reference's zero padding).
    bf16 <-> fp32 on the bit patterns (exact widening; RNE narrowing of the smoothed product, NaN kept): what
    the GPU's conversions do, and what Triton 3.6's interpreter does not (it mis-converts bf16 subnormals and
    rounds fp32 -> bf16 half-up), so that the interpreter tests see the GPU's bytes."""
    cmask = cols < K
    x = tl.load(x_ptr + xrow[:, None, None] + cols[None, :, :], mask=rmask[:, None, None] & cmask[None, :, :],
                other=0.0)
    BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    if BF16:
        xf = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        xf = x.to(tl.float32)
    if HAS_SMOOTH:  # non-fused smoothing: rounded to the activation dtype (schemes.base.apply_mul_scale)
        y = xf * tl.load(sm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
        if BF16:
            yb = y.to(tl.int32, bitcast=True)
            z = ((yb + 0x7FFF + ((yb >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
            xf = tl.where(y != y, y, z)
        else:
            xf = y.to(x_ptr.dtype.element_ty).to(tl.float32)
    return xf


@triton.jit
def _block_stats(x, EMAX: tl.constexpr, MAXV: tl.constexpr, SCALE_ALG: tl.constexpr, IS_FP8: tl.constexpr):
    """[ROWS, NB, 32] fp32 -> per block (|max| bits, exponent, NaN scale, E8M0 code), each [ROWS, NB]."""
    amax_bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2)
    e, nan_scale, code = _mx_block_exponent(amax_bits, EMAX, MAXV, SCALE_ALG, IS_FP8, 0x400000)
    return amax_bits, e, nan_scale, code


@triton.jit
def _e2m1_elements(v, ROUND: tl.constexpr):
    """fp32 v (x * 2**-e, NaN-scale blocks already 0) -> exact E2M1 element value, as
    ``numerics.elements.quantize_elements_`` (emin 0, mbits 1, max 6): step = 2**(max(floor(log2|v|), 0) - 1),
    m = v / step rounded (0 rint, 1 half away from zero with the fp32 add of 0.5, 2 floor), q = clamp(m * step).
    The binade is capped at 2**3 (|v| >= 8 saturates to 6 whatever the rounding), so every power of two is in
    range.  rint: |v| + 2**22 * step rounds |v| to a multiple of step (the ulp of that sum) half to even."""
    vb = v.to(tl.int32, bitcast=True)
    sign = vb & (-2147483648)
    a = vb & 0x7FFFFFFF
    pe = tl.minimum(tl.maximum(((a >> 23) & 0xFF) - 127, 0), 3)
    af = a.to(tl.float32, bitcast=True)
    if ROUND == 0:
        c = ((pe + 149) << 23).to(tl.float32, bitcast=True)  # 2**(pe + 22)
        q = tl.minimum((af + c) - c, 6.0)
        q = (q.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    elif ROUND == 1:
        t = af * _pow2(1 - pe) + 0.5  # |m| + 0.5, rounded in fp32 as the reference
        r = (t + 8388608.0) - 8388608.0  # rint for t < 2**23 (t is an integer above)
        r = tl.where(r > t, r - 1.0, r)  # floor
        q = tl.minimum(r * _pow2(pe - 1), 6.0)
        q = (q.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    else:
        m = v * _pow2(1 - pe)
        r = (m + 12582912.0) - 12582912.0  # rint for |m| < 2**22, either sign (|m| >= 2**22 saturates anyway)
        r = tl.where(r > m, r - 1.0, r)  # floor
        r = tl.where(m == 0.0, m, r)  # floor(-0) = -0
        q = tl.minimum(tl.maximum(r * _pow2(pe - 1), -6.0), 6.0)
    return q


@triton.jit
def _rows_emit(x, e, nan_scale, code, s_row, k0, cols, rmask, q_ptr, sc_ptr, xr_ptr, qrow, srow, rrow, KP,
               IS_FP8: tl.constexpr, ROUND: tl.constexpr, HEADROOM: tl.constexpr, WRITE_MX: tl.constexpr,
               ROWS: tl.constexpr, NB: tl.constexpr):
    """One chunk's outputs: E4M3 bytes of the row-rescaled element values, and (WRITE_MX) MX bytes + E8M0 codes.
    Element formats: E4M3 with "rint" (IS_FP8) or E2M1 (any round mode); the host wrapper refuses others.
    v = x * 2**-e is one fp32 multiply, as in numerics.mx (IEEE: SM90's FMUL does not flush subnormal x, nor
    does numpy), NaN-scale blocks set to 0 as there."""
    v = tl.where(nan_scale[:, :, None], 0.0, x * _pow2(-tl.minimum(e, 126))[:, :, None])
    if IS_FP8:
        if WRITE_MX:
            # MX bytes wanted too: the element values by the integer helper of triton_kernels (GPU-verified in
            # quantizer v1), NOT by the FP8 round trip below.  ptxas (CUDA 12.8 and 12.9, sm_90a) miscompiles
            # an E4M3 pair (cvt.rn.satfinite.e4m3x2.f32) that is both merged into the byte store's register
            # (F2FP.SATFINITE.E4M3.F32.PACK_AB_MERGE_C) and converted back (cvt.rn.f16x2.e4m3x2): the unpack of some
            # pairs reads the previous chunk's pair (a copy carried around the pass-2 loop) or R1 (the stack pointer)
            # in one pass.  That was the H200 byte mismatch of 2026-12-02 (docs/cuda.md);
            # tools/fp8tc_quant_probe.py --check-sass finds the pattern without a GPU.
            q = _mx_elements(x, e[:, :, None], nan_scale[:, :, None], -6, 3, 448.0, 0)
        else:
            # E4M3 elements (RNE, saturating at 448) are the FP8 convert: cvt.rn.satfinite.e4m3x2.f32 on SM90; the
            # pairs' one other use is the convert back (no byte store here: the SASS is clean)
            q = v.to(tl.float8e4nv).to(tl.float32)
    else:
        q = _e2m1_elements(v, ROUND)
    smask = rmask[:, None, None] & (cols < KP)[None, :, :]
    if WRITE_MX:
        blk = k0 // 32 + tl.arange(0, NB)
        tl.store(sc_ptr + srow[:, None] + blk[None, :], code.to(tl.uint8),
                 mask=rmask[:, None] & (blk < KP // 32)[None, :])
        if IS_FP8:
            tl.store(q_ptr + qrow[:, None, None] + cols[None, :, :], _e4m3_code(q), mask=smask)
        else:
            c = tl.reshape(_e2m1_code(q), [ROWS, NB, 16, 2])
            lo, hi = tl.split(c)
            pcols = k0 // 2 + tl.arange(0, NB)[:, None] * 16 + tl.arange(0, 16)[None, :]
            tl.store(q_ptr + qrow[:, None, None] + pcols[None, :, :], (lo | (hi << 4)).to(tl.uint8),
                     mask=rmask[:, None, None] & (pcols < KP // 2)[None, :, :])
    shift = tl.minimum(tl.maximum(tl.minimum(e, 127) - s_row[:, None], -64), HEADROOM)  # above: NaN-scale blocks
    # q * 2**shift is exact (|.| <= 448); its RNE onto E4M3 is the same FP8 convert (its one use: the byte store)
    xr = (q * _pow2(shift)[:, :, None]).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    tl.store(xr_ptr + rrow[:, None, None] + cols[None, :, :], xr, mask=smask)


@triton.jit(do_not_specialize=["M"])  # M only bounds the rows: one compile for every M
def mx_quant_rowwise_kernel(x_ptr, sm_ptr, q_ptr, sc_ptr, xr_ptr, sx_ptr, M, K, KP, stride_xm, stride_qm, stride_sm,
                            stride_rm, HAS_SMOOTH: tl.constexpr, IS_FP8: tl.constexpr, EMAX: tl.constexpr,
                            MAXV: tl.constexpr, ROUND: tl.constexpr, SCALE_ALG: tl.constexpr, HEADROOM: tl.constexpr,
                            WRITE_MX: tl.constexpr, ROWS: tl.constexpr, NB: tl.constexpr, SINGLE: tl.constexpr):
    """ROWS rows -> row-rescaled E4M3 bytes (KP) + fp32 row scale, and (WRITE_MX) MX q bytes + E8M0 codes.
    Chunks of NB blocks; SINGLE: NB * 32 >= KP, the row is read once.  Row exponent: the block exponent is
    monotone in the block |max| (every SCALE_ALG), so the largest exponent among blocks with a non-zero |max|
    is the exponent of the row |max|, and a NaN scale in some block is a NaN scale of the row |max|."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    xrow, qrow, srow, rrow = r64 * stride_xm, r64 * stride_qm, r64 * stride_sm, r64 * stride_rm
    base = tl.arange(0, NB)[:, None] * 32 + tl.arange(0, 32)[None, :]
    if SINGLE:
        x = _rows_values(x_ptr, sm_ptr, xrow, rmask, base, K, HAS_SMOOTH)
        amax_bits, e, nan_scale, code = _block_stats(x, EMAX, MAXV, SCALE_ALG, IS_FP8)
        row_amax = tl.max(amax_bits, axis=1)
    else:
        acc = tl.zeros([ROWS, NB, 32], tl.int32)
        for k0 in range(0, KP, NB * 32):  # pass 1: the row |max| (fp32 bit patterns; NaN above Inf)
            x = _rows_values(x_ptr, sm_ptr, xrow, rmask, k0 + base, K, HAS_SMOOTH)
            acc = tl.maximum(acc, x.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
        row_amax = tl.max(tl.max(acc, axis=2), axis=1)
    e_row, is_nan, _ = _mx_block_exponent(row_amax, EMAX, MAXV, SCALE_ALG, IS_FP8, 0x400000)
    s_row = tl.where(row_amax != 0, tl.minimum(e_row, 127) - HEADROOM, 0)
    if SINGLE:
        _rows_emit(x, e, nan_scale, code, s_row, 0, base, rmask, q_ptr, sc_ptr, xr_ptr, qrow, srow, rrow, KP,
                   IS_FP8, ROUND, HEADROOM, WRITE_MX, ROWS, NB)
    else:
        for k0 in range(0, KP, NB * 32):  # pass 2: every output of the chunk
            x = _rows_values(x_ptr, sm_ptr, xrow, rmask, k0 + base, K, HAS_SMOOTH)
            amax_bits, e, nan_scale, code = _block_stats(x, EMAX, MAXV, SCALE_ALG, IS_FP8)
            _rows_emit(x, e, nan_scale, code, s_row, k0, k0 + base, rmask, q_ptr, sc_ptr, xr_ptr, qrow, srow, rrow,
                       KP, IS_FP8, ROUND, HEADROOM, WRITE_MX, ROWS, NB)
    scale = tl.where(s_row >= -126, _pow2(tl.maximum(s_row, -126)), _pow2(tl.maximum(s_row + 64, -126)) * P2M64)
    scale = tl.where(is_nan, float("nan"), scale)
    tl.store(sx_ptr + rows, scale, mask=rmask)


_ROWWISE = _fast(mx_quant_rowwise_kernel)


# ---------------------------------------------------------------------------------------------
# the activation quantizer's plan (per layer, at prepare): chunk width, one or two passes, rows per program
# ---------------------------------------------------------------------------------------------
TILE = 4096  # elements a program works on per chunk when M is large (rows x chunk)
SINGLE_MAX = 8192  # the longest padded row read once (held in registers)
ROW_BUDGET = 16384  # elements a two-pass program reads between its passes (so pass 2 re-reads them from L2)
CHUNKS = (2048, 1024, 512, 256)  # two-pass chunk widths (64 / 32 / 16 / 8 blocks), widest first
SINGLE_MASKED = 8  # at large M one pass may mask at most kp / 8 (pass 1 costs about a tenth of pass 2)
CHUNK_MASKED = 16  # ... and a two-pass chunk's tail at most kp / 16
ELEMS_PER_THREAD = 8  # num_warps = rows x chunk / (32 x this), 1 to 16 (at least 4 for the small-M level)
DEFAULT_SMS = 132  # H100 / H200 SXM; prepare passes the device's own count


class RowwisePlan(tuple):
    """(kp, levels): ``levels`` = ((min_m, rows, nb, single, num_warps), ...) by falling min_m, the last with
    min_m 0: M >= min_m runs ``rows`` rows per program over chunks of ``nb`` 32-element blocks, in one pass
    when ``single`` (the padded row fits one chunk) and two otherwise."""

    __slots__ = ()

    def __new__(cls, kp, levels):
        return tuple.__new__(cls, (kp, levels))

    kp = property(lambda self: self[0])
    levels = property(lambda self: self[1])

    def pick(self, m: int) -> tuple:
        """(rows, nb, single, num_warps) for M rows."""
        for lv in self[1]:
            if m >= lv[0]:
                return lv[1:]
        return self[1][-1][1:]


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def _warps(tile: int, least: int = 1) -> int:
    return min(16, max(least, tile // (32 * ELEMS_PER_THREAD)))


def rowwise_plan(kp: int, n_sm: int = DEFAULT_SMS) -> RowwisePlan:
    """The quantizer's plan for padded K ``kp`` on a device with ``n_sm`` SMs (a rule, no timing).

    Large M (throughput; few masked lanes):
    * one pass when the next power of two of kp is at most SINGLE_MAX and masks at most kp / SINGLE_MASKED
      (Kp 256 ... 8192 powers of two, 3840, 7680, 7936): the row is read once;
    * otherwise two passes with the widest chunk of CHUNKS whose masked tail is at most kp / CHUNK_MASKED
      (13824 and 12288: 2048 wide, the last chunk of 13824 3/4 full; 5120 and 3072: 1024; 3328: 256);
    * rows per program: TILE / chunk, and for two passes at most ROW_BUDGET / kp; halved while M would give
      fewer than 2 programs per SM.
    Small M (fewer than 2 programs per SM even at one row each; latency): one row per program and the widest
    chunk (one pass up to SINGLE_MAX, masked lanes allowed; else 2048 wide), at least 4 warps.
    """
    if kp <= 0 or kp % 256:
        raise ValueError(f"padded K (kp) must be a positive multiple of 256, got {kp}")
    if n_sm < 1:
        raise ValueError(f"n_sm must be >= 1, got {n_sm}")
    p2 = 1 << (kp - 1).bit_length()
    single = p2 <= SINGLE_MAX and (p2 - kp) * SINGLE_MASKED <= kp
    if single:
        bk = p2
        rows = max(1, TILE // bk)
    else:
        bk = next(c for c in CHUNKS if (-(-kp // c) * c - kp) * CHUNK_MASKED <= kp)
        rows = max(1, min(TILE // bk, _pow2_floor(ROW_BUDGET // kp)))
    levels = []
    while rows >= 1:
        levels.append((rows * 2 * n_sm, rows, bk // 32, single, _warps(rows * bk)))
        rows //= 2
    bk1 = p2 if p2 <= SINGLE_MAX else CHUNKS[0]
    small = (0, 1, bk1 // 32, p2 <= SINGLE_MAX, _warps(bk1, 4))
    if levels[-1][1:] == small[1:]:
        levels[-1] = small
    else:
        levels.append(small)
    return RowwisePlan(kp, tuple(levels))


_PLANS: dict = {}


def mx_quant_rowwise(x2: torch.Tensor, smooth, fmt: ElemFormat, round_mode: str, scale_alg: int, kp: int, *,
                     write_mx: bool = True, launch_opts=None, plan: RowwisePlan | None = None):
    """(M, K) -> (MX q bytes or None, codes or None, E4M3 bytes (M, kp) uint8, row scale fp32 (M,)).
    ``plan``: ``rowwise_plan(kp, sms)`` (the kernel's, made at prepare); default: for DEFAULT_SMS SMs."""
    m, k = x2.shape
    if not ((fmt is E4M3 and round_mode == "rint") or (fmt is E2M1 and round_mode in _ROUND)):
        raise ValueError(f"mx_quant_rowwise: activation format {fmt.name} with round_mode={round_mode!r} is not "
                         f"supported (E4M3 with 'rint', or E2M1 with 'rint' / 'round' / 'floor')")
    if plan is None:
        plan = _PLANS.get(kp)
        if plan is None:
            plan = _PLANS[kp] = rowwise_plan(kp)
    elif plan[0] != kp:
        raise ValueError(f"mx_quant_rowwise: plan is for kp={plan[0]}, called with kp={kp}")
    if k > kp:
        raise ValueError(f"mx_quant_rowwise: x2 has K={k} columns, more than the padded kp={kp}")
    if m > 1 and x2.stride(1) != 1:
        raise ValueError(f"mx_quant_rowwise: x2 must have unit column stride, got strides {tuple(x2.stride())}")
    dev = x2.device
    q = torch.empty((m, kp if fmt.bits == 8 else kp // 2), dtype=torch.uint8, device=dev) if write_mx else None
    sc = torch.empty((m, kp // 32), dtype=torch.uint8, device=dev) if write_mx else None
    xr = torch.empty((m, kp), dtype=torch.uint8, device=dev)
    sx = torch.empty((m,), dtype=torch.float32, device=dev)
    if m:
        rows, nb, single, nw = plan.pick(m)
        _ROWWISE((-(-m // rows),), (
            x2, smooth if smooth is not None else x2, q if write_mx else xr, sc if write_mx else xr, xr, sx, m, k, kp,
            x2.stride(0), q.stride(0) if write_mx else 0, sc.stride(0) if write_mx else 0, xr.stride(0),
            smooth is not None, fmt is E4M3, fmt.emax, float(fmt.max_value), _ROUND[round_mode], scale_alg,
            6 if fmt is E2M1 else 0, write_mx, rows, nb, single), _opt_tuple(nw, None, launch_opts))
    return q, sc, xr, sx


__all__ = ["mx_quant_rowwise", "rowwise_plan", "RowwisePlan", "DEFAULT_SMS"]
