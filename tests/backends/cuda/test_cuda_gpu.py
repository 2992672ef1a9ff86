"""CUDA backend on a GPU: every Triton kernel against its pure-torch twin, and the backend against
the reference backend.  Quantizers: identical bytes.  int8 GEMM: identical (exact int32, same fp32
epilogue order).  MX GEMMs: fp32 summation-order tolerance.

Run: python -m pytest tests/backends/cuda -m gpu -q
"""
from __future__ import annotations

import pytest
import torch

from _cuda_cases import edge_rows, same_bits
from omni_npu_quant.backends import ReferenceBackend
from omni_npu_quant.numerics.constants import E2M1, E4M3
from omni_npu_quant.schemes.registry import get_scheme

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():  # the conftest skips too; this keeps the imports below off CPU CI
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from omni_npu_quant.backends import CudaBackend
from omni_npu_quant.kernels.cuda.jit import ops, twins  # noqa: E402

DEV = "cuda"
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# quantizer kernels vs twins: identical bytes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [4096, 333, 64])
def test_int8_dynamic_quant_bytes(dtype, k):
    x = edge_rows(k, dtype, seed=k)
    sm = torch.rand(k, generator=_g(1)) + 0.5
    for smooth in (None, sm):
        q, s = ops.int8_dynamic_quant(x.to(DEV), None if smooth is None else smooth.to(DEV))
        q2, s2 = twins.twin_int8_dynamic_quant(x, smooth)
        assert torch.equal(q.cpu(), q2)
        assert same_bits(s.cpu(), s2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_static_quant_bytes(dtype):
    k = 333
    x = edge_rows(k, dtype, seed=2) * 40
    sc = torch.tensor([1 / 0.037], dtype=dtype)
    off = torch.tensor([-7.0], dtype=dtype)
    sm = (torch.rand(k, generator=_g(3)) + 0.5)
    for smooth in (None, sm):
        q = ops.int8_static_quant(x.to(DEV), None if smooth is None else smooth.to(DEV), sc.to(DEV), off.to(DEV))
        assert torch.equal(q.cpu(), twins.twin_int8_static_quant(x, smooth, sc, off))


MX_CASES = [(E4M3, "rint", 0), (E4M3, "rint", 1)] + [(E2M1, rm, a) for rm in ("rint", "round", "floor") for a in (0, 1, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt,rm,alg", MX_CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_mx_quant_bytes(dtype, fmt, rm, alg):
    for k in (512, 333):
        kp = -(-k // 256) * 256
        x = edge_rows(k, dtype, seed=k + alg)
        sm = torch.rand(k, generator=_g(5)) + 0.5
        for smooth in (None, sm):
            q, sc, dq = ops.mx_quant(x.to(DEV), None if smooth is None else smooth.to(DEV), fmt, rm, alg, kp,
                                     write_deq=True)
            q2, sc2, dq2 = twins.twin_mx_quant(x, smooth, fmt, rm, alg, kp)
            assert torch.equal(sc.cpu(), sc2), (k, smooth is None)
            assert torch.equal(q.cpu(), q2), (k, smooth is None)
            fin = torch.isfinite(dq2)
            assert torch.equal(dq.cpu().float()[fin], dq2.to(torch.bfloat16).float()[fin])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rm", ["rint", "round", "floor"])
def test_dual_quant_bytes(dtype, rm):
    k = 1536
    x = edge_rows(k, dtype, seed=7)
    sm = (torch.rand(k, generator=_g(8)) + 0.5).to(dtype)
    for smooth in (None, sm):
        q, sc, l0 = ops.dual_quant(x.to(DEV), None if smooth is None else smooth.to(DEV), rm)
        q2, sc2, l02 = twins.twin_dual_quant(x, smooth, rm)
        assert torch.equal(sc.cpu(), sc2)
        assert torch.equal(q.cpu(), q2)
        assert same_bits(l0.cpu(), l02)


# ---------------------------------------------------------------------------------------------
# GEMM kernels vs twins
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 7, 16, 17, 130, 2048])
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_int8_gemm_exact(m, out_dtype):
    g = _g(m)
    n, k = 384, 1000
    q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    sx, ws, bias = torch.rand(m, generator=g), torch.rand(n, 1, generator=g) * 1e-2, torch.randn(n, generator=g)
    for b in (None, bias):
        o = ops.int8_gemm(q.to(DEV), w.to(DEV), out_dtype, sx=sx.to(DEV), ws=ws.to(DEV), bias=None if b is None else b.to(DEV))
        r = twins.twin_int8_gemm(q, w, out_dtype, sx=sx, ws=ws, bias=b)
        assert torch.equal(o.cpu(), r)
    qb = torch.randint(-5000, 5000, (n,), generator=g, dtype=torch.int32)
    deq = torch.rand(n, generator=g) * 1e-4
    o = ops.int8_gemm(q.to(DEV), w.to(DEV), out_dtype, quant_bias=qb.to(DEV), deq=deq.to(DEV), static=True)
    assert torch.equal(o.cpu(), twins.twin_int8_gemm(q, w, out_dtype, quant_bias=qb, deq=deq, static=True))
    # per-group weight scales
    kg = 1024
    q = torch.randint(-127, 128, (m, kg), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (n, kg), generator=g, dtype=torch.int8)
    wsg = torch.rand(n, 8, generator=g)
    o = ops.int8_gemm(q.to(DEV), w.to(DEV), out_dtype, sx=sx.to(DEV), ws=wsg.to(DEV), group_k=128)
    assert torch.equal(o.cpu(), twins.twin_int8_gemm(q, w, out_dtype, sx=sx, ws=wsg, group_k=128))


def _mx_tol(r):
    return 1e-5 * r.abs().amax().clamp(min=1.0).item() + 1e-6


@pytest.mark.parametrize("m", [1, 16, 100, 1100])
@pytest.mark.parametrize("afmt,wfmt", [(E4M3, E4M3), (E2M1, E2M1), (E4M3, E2M1)], ids=["mxfp8", "mxfp4", "w4a8"])
def test_mx_gemm(m, afmt, wfmt):
    g = _g(m)
    n, k = 320, 768
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    aq, asc, _ = twins.twin_mx_quant(x, None, afmt, "rint", 0, k)
    wq, wsc, _ = twins.twin_mx_quant(w, None, wfmt, "rint", 0, k)
    d = lambda t: t.to(DEV)  # noqa: E731
    o = ops.mx_gemm(d(aq), d(asc), d(wq), d(wsc), n, k, torch.float32, afmt, wfmt, bias=d(bias)).cpu()
    r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, afmt, wfmt, bias=bias)
    assert (o - r).abs().max().item() <= _mx_tol(r)
    wd = ops.mx_weight_dequant(d(wq), d(wsc), k, wfmt).cpu()
    assert torch.equal(wd, twins.twin_mx_weight_dequant(wq, wsc, k, wfmt))


@pytest.mark.parametrize("m", [1, 16, 300])
def test_dual_gemm(m):
    g = _g(m)
    n, k = 256, 1536
    x, w = torch.randn(m, k, generator=g) * 3, torch.randn(n, k, generator=g)
    aq, asc, l0 = twins.twin_dual_quant(x, None, "rint")
    wq, wsc, l0w = twins.twin_dual_quant(w, None, "rint")
    d = lambda t: t.to(DEV)  # noqa: E731
    o = ops.mx_gemm(d(aq), d(asc), d(wq), d(wsc), n, k, torch.float32, E2M1, E2M1, l0x=d(l0), l0w=d(l0w)).cpu()
    r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, E2M1, E2M1, l0x=l0, l0w=l0w)
    assert (o - r).abs().max().item() <= _mx_tol(r)


# ---------------------------------------------------------------------------------------------
# backend vs reference backend, every scheme
# ---------------------------------------------------------------------------------------------
def _layer(scheme, n, k, g, with_bias=True, mul_scale=False):
    w = torch.randn(n, k, generator=g) * 0.05
    b = torch.randn(n, generator=g) if with_bias else None
    if scheme.name == "w8a8_static":
        t = scheme.quantize_weight(w, b, act_min=-4.0, act_max=5.0)
    else:
        t = scheme.quantize_weight(w, b)
    t.pop("weight_offset", None) if scheme.name == "w8a8_static" else None
    if mul_scale:
        t["mul_scale"] = torch.rand(k, generator=g) + 0.5
    return t


SCHEMES = ["w8a8_dynamic", "w8a8_static", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual", "w8a16"]
MX_SCHEMES = ("mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_matches_reference(name, dtype):
    g = _g(11)
    scheme = get_scheme(name)
    n, k = 256, 1024
    # the E1 / E0 kernels (cuda.mx for MX: tests/backends/cuda/test_fp8tc_gpu.py checks cuda.mx_fp8tc, E2)
    ref, cuda = ReferenceBackend(), CudaBackend(kernel="cuda.mx" if name in MX_SCHEMES else None)
    for ms in (False, True):
        t = _layer(scheme, n, k, g, mul_scale=ms)
        pr = ref.prepare(scheme, t, dtype)
        pc = cuda.prepare(scheme, t, dtype)
        for m in (1, 16, 33, 1100):
            x = (torch.randn(2, (m + 1) // 2, k, generator=g) * 2).to(dtype)
            qa, qb = ref.quantize_activation(pr, x), cuda.quantize_activation(pc, x)
            assert set(qa) == set(qb)
            for key in qa:
                assert same_bits(qb[key].cpu(), qa[key]), (key, m)
            yr, yc = ref.apply(pr, x), cuda.apply(pc, x).cpu()
            assert yc.dtype == yr.dtype and yc.shape == yr.shape
            if name.startswith("w8a8"):
                # exact int32 accumulators and the same fp32 epilogue: at most 1 ulp of the output dtype
                ulp = torch.finfo(dtype).eps * yr.float().abs().clamp(min=torch.finfo(dtype).tiny)
                assert ((yc.float() - yr.float()).abs() <= ulp).all(), (m, (yc.float() - yr.float()).abs().max())
            else:
                tol = 1e-5 * yr.float().abs().amax().item() + (torch.finfo(dtype).eps * yr.float().abs()).amax().item()
                assert (yc.float() - yr.float()).abs().max().item() <= tol, (m, ms)


def test_capability_sm90():
    cap = CudaBackend().capability(get_scheme("mxfp4"))
    major = torch.cuda.get_device_capability()[0]
    assert cap.ok
    if major == 9:
        assert cap.mode == "native" and cap.kernel == "cuda.mx_fp8tc"
        dual = CudaBackend().capability(get_scheme("mxfp4_dual"))
        assert dual.kernel == "cuda.mx" and any(k == "cuda.mx_fp8tc" for k, _ in dual.refusals)


@pytest.mark.parametrize("rm", ["floor", "rint", "round"])
def test_mx_quant_subnormal_underflow(rm):
    """fp32 subnormal activations beside a large value in one block: x * 2**-e underflows to a signed zero in fp32,
    so "floor" gives -0 (the reference), not -0.5 (fixed 2026-12-02 in triton_kernels._mx_elements; interpreter-tested,
    this is the GPU check, including any flush-to-zero of the GPU's fp32 multiply)."""
    x = torch.zeros(4, 64)
    x[:, 0] = 16.0
    sub = [-2.0**-149, -2.0**-140, -3 * 2.0**-149, 2.0**-149, -2.0**-127, -1e-39, -2.0**-130, -2.0**-126]
    x[0, 1:1 + len(sub)] = torch.tensor(sub)
    for r, big in ((1, 2.0**-100), (2, 2.0**-120), (3, 1e-39)):
        x[r, 32] = big
        x[r, 33:33 + len(sub)] = torch.tensor(sub)
    for alg in (0, 1, 2):
        a = ops.mx_quant(x.to(DEV), None, E2M1, rm, alg, 256)
        b = twins.twin_mx_quant(x, None, E2M1, rm, alg, 256)
        assert torch.equal(a[0].cpu(), b[0]) and torch.equal(a[1].cpu(), b[1]), (rm, alg)
