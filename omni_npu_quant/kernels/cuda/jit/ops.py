"""Launchers of the Triton kernels (imported lazily; needs ``triton``).

Each launcher returns exactly what its pure-torch twin in ``twins.py`` returns.  Kernel configs
come from a small per-shape table (decode M <= 16, mid, prefill M >= 2048); setting
``OMNI_NPU_QUANT_CUDA_AUTOTUNE=1`` times the candidate configs once per (kernel, M bucket, N, K)
with ``triton.testing.do_bench`` and keeps the fastest (the benchmark does this).
"""
from __future__ import annotations

import os

import torch
import triton

from ....numerics.constants import E2M1, E4M3, ElemFormat
from . import decode as _decode
from . import triton_kernels as K
from .launch import fast as _fast

_ROUND = {"rint": 0, "round": 1, "floor": 2}
_LAUNCH = {"enable_fp_fusion": False}
_TUNED: dict = {}
CHOSEN: dict = {}  # key -> config, for the benchmark report


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # fixed at import (interpret.enable() runs before)
_OPTS = {} if INTERPRETED else dict(_LAUNCH)  # the interpreter ignores compile options; keep them out there


def _launch_opts():
    return _OPTS


_OPTS_T = tuple(_OPTS.items())
_OPT_CACHE: dict = {}


def _opts(num_warps: int, num_stages: int | None = None) -> tuple:
    """Launch options as the hashable tuple ``launch.FastKernel`` takes (built once per pair)."""
    o = _OPT_CACHE.get((num_warps, num_stages))
    if o is None:
        o = (("num_warps", num_warps),) + ((("num_stages", num_stages),) if num_stages is not None else ()) + _OPTS_T
        _OPT_CACHE[(num_warps, num_stages)] = o
    return o


# every launch goes through launch.FastKernel (Triton's own launch the first time per specialization)
_INT8_DYN = _fast(K.int8_dynamic_quant_kernel)
_INT8_STATIC = _fast(K.int8_static_quant_kernel)
_MX_QUANT = _fast(K.mx_quant_kernel)
_DUAL_QUANT = _fast(K.dual_quant_kernel)
_INT8_GEMM = _fast(K.int8_gemm_kernel)
_MX_GEMM = _fast(K.mx_gemm_kernel)
_MX_WDEQ = _fast(K.mx_weight_dequant_kernel)


def cdiv(a: int, b: int) -> int:  # plain ints: triton.cdiv is a constexpr function, slow to call from the host
    return -(-a // b)


def next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def m_bucket(m: int) -> int:
    if m <= 16:
        return 16
    if m <= 64:
        return 64
    if m <= 256:
        return 256
    if m <= 1024:
        return 1024
    return 4096


# ---------------------------------------------------------------------------------------------
# quantizers
# ---------------------------------------------------------------------------------------------
def int8_dynamic_quant(x2: torch.Tensor, smooth: torch.Tensor | None):
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x2.device)
    s = torch.empty((m,), dtype=torch.float32, device=x2.device)
    if m:
        block = min(4096, next_pow2(k))
        _INT8_DYN((m,), (x2, smooth if smooth is not None else x2, q, s, k, x2.stride(0), q.stride(0),
                         smooth is not None, block), _opts(8 if block >= 2048 else 4))
    return q, s


def int8_static_quant(x2: torch.Tensor, smooth, scale, offset):
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x2.device)
    n = m * k
    if n:
        block = 2048
        _INT8_STATIC((cdiv(n, block),), (x2, smooth if smooth is not None else x2, scale, offset, q, n, k,
                                          smooth is not None, block), _opts(8))
    return q


def _fmt_consts(fmt: ElemFormat):
    return dict(IS_FP8=fmt.bits == 8, EMAX=fmt.emax, EMIN=fmt.emin, MBITS=fmt.mbits, MAXV=float(fmt.max_value))


_FMT_T: dict = {}


def _fmt_tuple(fmt: ElemFormat) -> tuple:
    """(IS_FP8, EMAX, EMIN, MBITS, MAXV) of a format, in mx_quant_kernel's parameter order (built once)."""
    t = _FMT_T.get(fmt.name)
    if t is None:
        t = _FMT_T[fmt.name] = tuple(_fmt_consts(fmt).values())
    return t


def mx_quant(x2: torch.Tensor, smooth, fmt: ElemFormat, round_mode: str, scale_alg: int, kp: int,
             *, write_q: bool = True, write_deq: bool = False, dst_type_max: float = 0.0):
    """(M, K) act-dtype -> (q (M, kp) e4m3 bytes | (M, kp/2) packed FP4, codes (M, kp/32), deq bf16 (M, kp) or None)."""
    m, k = x2.shape
    if kp % 64:
        raise ValueError(f"padded K must be a multiple of 64, got {kp}")
    dev = x2.device
    qcols = kp if fmt.bits == 8 else kp // 2
    q = torch.empty((m, qcols), dtype=torch.uint8, device=dev) if write_q else None
    sc = torch.empty((m, kp // 32), dtype=torch.uint8, device=dev) if write_q else None
    dq = torch.empty((m, kp), dtype=torch.bfloat16, device=dev) if write_deq else None
    if dst_type_max not in (0.0, 6.0, 7.0):
        raise ValueError(f"CUDA MX quantizer supports dst_type_max 0, 6 or 7, got {dst_type_max}")
    uos = 0x600000 if dst_type_max == 7.0 else 0x400000
    nb = 8 if kp % 256 == 0 else 2
    if m:
        dummy = x2
        is_fp8, emax, emin, mbits, maxv = _fmt_tuple(fmt)
        _MX_QUANT((m, kp // (32 * nb)), (
            x2, smooth if smooth is not None else dummy, q if q is not None else dummy, sc if sc is not None else dummy,
            dq if dq is not None else dummy, k, x2.stride(0), q.stride(0) if q is not None else 0,
            sc.stride(0) if sc is not None else 0, dq.stride(0) if dq is not None else 0,
            smooth is not None, is_fp8, emax, emin, mbits, maxv, _ROUND[round_mode], scale_alg, uos,
            write_q, write_deq, nb), _opts(4))
    return q, sc, dq


def dual_quant(x2: torch.Tensor, smooth, round_mode: str):
    m, k = x2.shape
    if k % 512:
        raise ValueError(f"dual-level quantization needs K % 512 == 0, got K={k}")
    dev = x2.device
    q = torch.empty((m, k // 2), dtype=torch.uint8, device=dev)
    sc = torch.empty((m, k // 32), dtype=torch.uint8, device=dev)
    l0 = torch.empty((m, k // 512), dtype=torch.float32, device=dev)
    if m:
        _DUAL_QUANT((m, k // 512), (x2, smooth if smooth is not None else x2, q, sc, l0, k, x2.stride(0), q.stride(0),
                                    sc.stride(0), l0.stride(0), smooth is not None, _ROUND[round_mode],
                                    x2.dtype != torch.float32), _opts(4))
    return q, sc, l0


# ---------------------------------------------------------------------------------------------
# GEMM configs
# ---------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
# First entry = default; the order follows the autotuned winners on an H200 (2026-11-21,
# N = K in {4096, 8192}; docs/performance.md).  Each entry was run by the benchmark.
INT8_TABLE = {
    16: [(16, 32, 256, 1, 4, 5), (16, 64, 256, 1, 4, 4), (16, 128, 128, 1, 4, 4), (32, 64, 256, 1, 4, 4)],
    64: [(64, 64, 256, 4, 4, 4), (32, 64, 256, 4, 4, 4), (64, 128, 128, 4, 4, 4)],
    256: [(128, 64, 128, 8, 4, 4), (64, 128, 128, 8, 4, 4), (128, 128, 128, 8, 8, 3)],
    1024: [(128, 128, 128, 8, 8, 3), (128, 256, 128, 8, 8, 3), (64, 128, 128, 8, 4, 4)],
    4096: [(256, 128, 128, 8, 8, 3), (128, 256, 128, 8, 8, 3), (128, 128, 128, 8, 8, 4), (128, 256, 64, 8, 8, 4)],
}
MX_TABLE = {
    16: [(16, 64, 256, 1, 4, 3), (16, 32, 256, 1, 4, 4), (16, 128, 128, 1, 4, 3), (16, 64, 128, 1, 4, 4)],
    64: [(64, 64, 256, 4, 4, 3), (32, 64, 256, 4, 4, 3), (64, 128, 128, 4, 4, 3)],
    256: [(64, 128, 128, 8, 4, 3), (128, 64, 128, 8, 4, 3), (128, 128, 128, 8, 8, 3)],
    1024: [(128, 128, 128, 8, 8, 3), (128, 256, 128, 8, 8, 3), (64, 128, 128, 8, 4, 3)],
    4096: [(128, 256, 128, 8, 8, 3), (256, 128, 128, 8, 8, 3), (128, 128, 128, 8, 8, 3), (128, 128, 256, 8, 8, 3)],
}


def _autotune() -> bool:
    return os.environ.get("OMNI_NPU_QUANT_CUDA_AUTOTUNE") == "1" and os.environ.get("TRITON_INTERPRET") != "1"


def _pick(key, candidates, run):
    """First candidate, or (autotune) the fastest by do_bench median; failing configs are skipped."""
    if key in _TUNED:
        return _TUNED[key]
    if not _autotune():
        _TUNED[key] = candidates[0]
        CHOSEN[key] = candidates[0]
        return candidates[0]
    from triton.testing import do_bench

    best, best_t = None, float("inf")
    for cfg in candidates:
        try:
            t = do_bench(lambda: run(cfg), warmup=5, rep=20, return_mode="median")
        except Exception:  # e.g. out of shared memory for this config
            continue
        if t < best_t:
            best, best_t = cfg, t
    if best is None:
        best = candidates[-1]
    _TUNED[key] = best
    CHOSEN[key] = best
    return best


def _grid(m, n, cfg):
    return (cdiv(m, cfg[0]) * cdiv(n, cfg[1]),)


def int8_gemm(q: torch.Tensor, w: torch.Tensor, out_dtype, *, sx=None, ws=None, bias=None, quant_bias=None,
              deq=None, static: bool = False, group_k: int | None = None):
    m, k = q.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=q.device)
    if m == 0:
        return out
    group_k = group_k or k
    n_groups = k // group_k
    mb = m_bucket(m)
    dummy = q
    has_bias = (quant_bias is not None) if static else (bias is not None)

    def run(cfg):
        bm, bn, bk, gm, nw, ns = cfg
        _INT8_GEMM(_grid(m, n, cfg), (
            q, w, out, sx if sx is not None else dummy, ws if ws is not None else dummy,
            bias if bias is not None else dummy, quant_bias if quant_bias is not None else dummy,
            deq if deq is not None else dummy, m, n, k, q.stride(0), w.stride(0), out.stride(0),
            ws.stride(0) if ws is not None else 0,
            1 if static else 0, has_bias, group_k, n_groups, bm, bn, bk, gm), _opts(nw, ns))

    pk = ("int8", mb, n, k, static, n_groups)
    cfg = _TUNED.get(pk)
    if cfg is None:  # candidates built on the first call of a shape only
        cands = INT8_TABLE[mb]
        if n_groups > 1:  # a K block must not straddle two groups
            cands = [c[:2] + (min(c[2], group_k & -group_k),) + c[3:] for c in cands]
        cfg = _pick(pk, cands, run)
    run(cfg)
    return out


def mx_gemm(a_q, a_s, w_q, w_s, n, kp, out_dtype, a_fmt: ElemFormat, w_fmt: ElemFormat, *, bias=None, l0x=None, l0w=None,
            decode: bool | None = None):
    """MX GEMM; M <= 16 goes to the split-K decode kernel (decode.py) when ``decode`` is true (``cuda.mx`` decides
    at prepare); ``decode=None``: the policy ``decode.enabled`` (reads its environment variable) per call."""
    m = a_q.shape[0]
    if m <= _decode.MAX_M and m and (_decode.enabled(w_fmt is E2M1, n, kp) if decode is None else decode):
        return _decode.mx_gemm_decode(a_q, a_s, w_q, w_s, n, kp, out_dtype, a_fmt is E2M1, w_fmt is E2M1, bias=bias,
                                      l0x=l0x, l0w=l0w, pick=_pick, launch_opts=_OPTS, tuned=_TUNED)
    out = torch.empty((m, n), dtype=out_dtype, device=a_q.device)
    if m == 0:
        return out
    dual = l0x is not None
    mb = m_bucket(m)
    af = "e2m1" if a_fmt is E2M1 else "e4m3"
    wf = "e2m1" if w_fmt is E2M1 else "e4m3"
    a_t = a_q.view(torch.float8_e4m3fn) if af == "e4m3" else a_q
    w_t = w_q.view(torch.float8_e4m3fn) if wf == "e4m3" else w_q
    dummy = a_s

    def run(cfg):
        bm, bn, bk, gm, nw, ns = cfg
        _MX_GEMM(_grid(m, n, cfg), (
            a_t, a_s, w_t, w_s, out, bias if bias is not None else dummy, l0x if dual else dummy, l0w if dual else dummy,
            m, n, kp, a_q.stride(0), a_s.stride(0), w_q.stride(0), w_s.stride(0), out.stride(0),
            l0x.stride(0) if dual else 0, l0w.stride(0) if dual else 0,
            af, wf, dual, bias is not None, bm, bn, bk, gm), _opts(nw, ns))

    pk = ("mx", af, wf, dual, mb, n, kp)
    cfg = _TUNED.get(pk)
    if cfg is None:
        cands = [c for c in MX_TABLE[mb] if kp % c[2] == 0 and (not dual or 512 % c[2] == 0)] or [(16, 64, 64, 1, 4, 3)]
        cfg = _pick(pk, cands, run)
    run(cfg)
    return out


def mx_weight_dequant(w_q, w_s, kp, w_fmt: ElemFormat, out: torch.Tensor | None = None):
    """Stored MX weight (N, kp[/2]) + codes (N, kp/32) -> exact bf16 (N, kp)."""
    n = w_q.shape[0]
    if out is None:
        out = torch.empty((n, kp), dtype=torch.bfloat16, device=w_q.device)
    nb = 8 if kp % 256 == 0 else 2
    w_t = w_q.view(torch.uint8) if w_fmt is E2M1 else w_q.view(torch.float8_e4m3fn)
    _MX_WDEQ((n, kp // (32 * nb)), (w_t, w_s, out, kp, w_q.stride(0), w_s.stride(0), out.stride(0), w_fmt is E2M1, nb),
             _opts(4))
    return out


__all__ = ["int8_dynamic_quant", "int8_static_quant", "mx_quant", "dual_quant", "int8_gemm", "mx_gemm",
           "mx_weight_dequant", "m_bucket", "CHOSEN", "E4M3", "E2M1"]
