"""cuda.mx_fp8tc on a GPU (SM90): quantizer bytes vs its twin, FP8 GEMM vs its twin, the backend vs the
reference backend within rtol 1e-3 (E2) on edge cases (ties, saturation, subnormals, zero / NaN blocks,
odd shapes, bf16 / fp16), then every CUDA path captured in a CUDA graph and run under torch.compile.

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
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from omni_npu_quant.backends import CudaBackend  # noqa: E402
from omni_npu_quant.kernels.cuda.jit import fp8tc, twins  # noqa: E402

DEV = "cuda"
SM90 = torch.cuda.get_device_capability()[0] == 9
needs_sm90 = pytest.mark.skipif(not SM90, reason="cuda.mx_fp8tc is SM90 only")


def _g(s):
    return torch.Generator().manual_seed(s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fmt,rm,alg", [(E4M3, "rint", 0), (E4M3, "rint", 1), (E2M1, "rint", 0), (E2M1, "round", 1),
                                        (E2M1, "floor", 2)], ids=str)
def test_rowwise_quant_bytes(dtype, fmt, rm, alg):
    for k in (512, 333, 4096):
        kp = -(-k // 256) * 256
        x = edge_rows(k, dtype, seed=k + alg)
        sm = torch.rand(k, generator=_g(5)) + 0.5
        for smooth in (None, sm):
            a = fp8tc.mx_quant_rowwise(x.to(DEV), None if smooth is None else smooth.to(DEV), fmt, rm, alg, kp)
            b = twins.twin_mx_quant_rowwise(x, smooth, fmt, rm, alg, kp)
            for u, v, what in zip(a[:3], b[:3], ("q", "codes", "xr")):
                assert torch.equal(u.cpu(), v), (what, k, smooth is None)
            assert same_bits(a[3].cpu(), b[3]), (k, smooth is None)
            n = fp8tc.mx_quant_rowwise(x.to(DEV), None if smooth is None else smooth.to(DEV), fmt, rm, alg, kp,
                                       write_mx=False)
            assert torch.equal(n[2], a[2]) and same_bits(n[3], a[3])


@needs_sm90
@pytest.mark.parametrize("m,n,kp", [(1, 64, 256), (16, 333, 768), (100, 320, 1024), (1100, 1000, 2048),
                                    (4096, 512, 4096)])
def test_fp8_gemm_vs_twin(m, n, kp):
    g = _g(m + n)
    xr = (torch.randn(m, kp, generator=g) * 30).to(torch.float8_e4m3fn).view(torch.uint8)
    wr = (torch.randn(n, kp, generator=g) * 30).to(torch.float8_e4m3fn).view(torch.uint8)
    sx, sw, b = torch.rand(m, generator=g) * 1e-2, torch.rand(n, generator=g) * 1e-2, torch.randn(n, generator=g)
    r = twins.twin_fp8_rowwise_gemm(xr, sx, wr, sw, torch.float32, bias=b)
    for od in (torch.float32, torch.bfloat16, torch.float16):
        o = fp8tc.fp8_rowwise_gemm(xr.to(DEV), sx.to(DEV), wr.to(DEV), sw.to(DEV), n, kp, od, bias=b.to(DEV)).cpu()
        tol = 1e-3 * r.abs().amax().item() + (torch.finfo(od).eps * r.abs()).amax().item()
        assert (o.float() - r).abs().max().item() <= tol, (od, (o.float() - r).abs().max().item())
        # rtol 1e-3 elementwise, with an absolute floor of 1e-3 of the output scale (cancellation)
        assert torch.allclose(o.float(), r, rtol=1e-3 + torch.finfo(od).eps, atol=1e-3 * r.abs().amax().item())


def _layer(scheme, n, k, g, mul_scale=False, edge=False):
    w = torch.randn(n, k, generator=g) * 0.05
    if edge:
        w[1] = 0.0  # zero row
        w[2, :64] = 0.0  # zero blocks
        w[3] *= 2.0 ** (torch.arange(k) // 32 % 20 - 12).float()  # blocks over 20 binades (inexact rows), fp16-finite
        w[4, 5] = 1e-30  # subnormal-range magnitudes
    t = scheme.quantize_weight(w, torch.randn(n, generator=g))
    if mul_scale:
        t["mul_scale"] = torch.rand(k, generator=g) + 0.5
    return t


@needs_sm90
@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "w4a8_mxfp"])
@pytest.mark.parametrize("dtype,gemm", [(torch.bfloat16, "scaled_mm"), (torch.bfloat16, "auto"), (torch.float16, "auto"),
                                        (torch.bfloat16, "triton")],
                         ids=["bf16-default", "bf16-auto", "fp16-auto", "bf16-triton-gemm"])
def test_backend_fp8tc_vs_reference(name, dtype, gemm):
    """E2: |y - ref| <= 1e-3 * max|ref| + 1 ulp of the output dtype, and the same as a norm ratio."""
    g = _g(11)
    scheme = get_scheme(name)
    ref = ReferenceBackend()
    cuda = CudaBackend(fp8tc_gemm=gemm) if gemm != "triton" else CudaBackend(fp8tc_gemm="triton", fp8tc_min_m=1)
    for n, k, ms, edge, mlist in ((333, 736, False, True, (1, 16, 33, 1100)), (256, 1024, True, False, (1, 16, 33, 1100)),
                                  (1024, 4096, False, False, (16, 300))):
        t = _layer(scheme, n, k, g, mul_scale=ms, edge=edge)
        pr, pc = ref.prepare(scheme, t, dtype), cuda.prepare(scheme, t, dtype)
        assert pc.kernel_name == ("cuda.mx" if gemm == "scaled_mm" and n % 16 else "cuda.mx_fp8tc"), (n, gemm)
        for m in mlist:
            x = (torch.randn(m, k, generator=g) * 2).to(dtype)
            if edge and m >= 16:
                x[0] = edge_rows(k, dtype, nonfinite=False, seed=m)[0]
                x[1] = 0.0
                x[2, :32] = 1e-3  # a small block next to normal ones
                x[3] = edge_rows(k, dtype, nonfinite=False, seed=m)[3]  # ties
                x[4] = edge_rows(k, dtype, nonfinite=False, seed=m)[4]  # saturation
            qa, qb = ref.quantize_activation(pr, x), cuda.quantize_activation(pc, x)
            for key in qa:  # the bytes quantize_activation reports are the reference's
                assert same_bits(qb[key].cpu(), qa[key]), (key, m)
            yr, yc = ref.apply(pr, x).float(), cuda.apply(pc, x).cpu().float()
            scale = yr.abs().amax().item()
            tol = 1e-3 * scale + (torch.finfo(dtype).eps * yr.abs()).amax().item()
            assert (yc - yr).abs().max().item() <= tol, (n, k, m, (yc - yr).abs().max().item(), scale)
            rel = ((yc - yr).norm() / yr.norm().clamp(min=1e-30)).item()
            assert rel <= 1e-3 + torch.finfo(dtype).eps, (n, k, m, rel)


@needs_sm90
def test_backend_fp8tc_nan_blocks():
    """A NaN activation poisons its row only; a NaN weight block scale (E8M0 code 255) is refused at prepare with the
    tensor and index named (schemes/mx_base.py: no checkpoint writer emits it; before the hardening issue this test
    expected a NaN output column, which is why it failed on the H200 on 2026-12-02)."""
    from omni_npu_quant.schemes.base import SchemeValidationError

    scheme = get_scheme("mxfp8")
    g = _g(3)
    n, k = 64, 512
    t = _layer(scheme, n, k, g)
    ref, cuda = ReferenceBackend(), CudaBackend()
    pr, pc = ref.prepare(scheme, t, torch.bfloat16), cuda.prepare(scheme, t, torch.bfloat16)
    assert pc.kernel_name == "cuda.mx_fp8tc"
    x = torch.randn(40, k, generator=g).to(torch.bfloat16)
    x[7, 100] = float("nan")  # NaN activation: row 7 is NaN
    yr, yc = ref.apply(pr, x).float(), cuda.apply(pc, x).cpu().float()
    assert torch.isnan(yr[7]).all() and not torch.isnan(yr[torch.arange(40) != 7]).any()
    assert torch.equal(torch.isnan(yr), torch.isnan(yc))
    fin = ~torch.isnan(yr)
    # the E2 contract: 1e-3 of the output scale plus one bf16 ulp of the element (the _scaled_mm output rounding; a
    # 0.0156 difference at 2.45 was one ulp, 2026-12-02 H200)
    tol = 1e-3 * yr[fin].abs().max() + 1e-2 + yr[fin].abs() * 2.0 ** -7
    assert bool(((yc[fin] - yr[fin]).abs() <= tol).all())
    bad = dict(t, weight_scale=t["weight_scale"].clone())
    bad["weight_scale"][5, 2] = 255
    with pytest.raises(SchemeValidationError, match=r"weight_scale.*255.*\[5, 2\]"):
        cuda.prepare(scheme, bad, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# every CUDA path under CUDA graphs and torch.compile
# ---------------------------------------------------------------------------------------------
PATHS = [("w8a8_dynamic", None, 1), ("w8a8_dynamic", None, 300), ("w8a8_static", None, 5),
         ("mxfp8", "cuda.mx", 1), ("mxfp8", "cuda.mx", 300), ("mxfp4", "cuda.mx", 8), ("mxfp4_dual", None, 4),
         ("mxfp4_dual", None, 300), ("w4a8_mxfp", "cuda.mx", 1100), ("mxfp8", "cuda.mx_fp8tc", 1),
         ("mxfp4", "cuda.mx_fp8tc", 300), ("w4a8_mxfp", "cuda.mx_fp8tc", 16)]


def _prep(name, kernel, n=256, k=1024, dtype=torch.bfloat16):
    scheme = get_scheme(name)
    g = _g(7)
    w = torch.randn(n, k, generator=g) * 0.05
    kw = {"act_min": -4.0, "act_max": 5.0} if name == "w8a8_static" else {}
    t = scheme.quantize_weight(w, torch.randn(n, generator=g), **kw)
    if name == "w8a8_static":
        t.pop("weight_offset", None)
    be = CudaBackend(kernel=kernel)
    return be, be.prepare(scheme, t, dtype)


@pytest.mark.parametrize("name,kernel,m", PATHS, ids=lambda v: str(v))
def test_cuda_graph_capture(name, kernel, m, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    if kernel == "cuda.mx_fp8tc" and not SM90:
        pytest.skip("SM90 only")
    be, p = _prep(name, kernel)
    x = torch.randn(m, p.k, device=DEV, dtype=torch.bfloat16)
    eager = be.apply(p, x)  # warm-up: compiles and picks configs outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = be.apply(p, x)
    x.copy_(torch.randn(m, p.k, device=DEV, dtype=torch.bfloat16))
    graph.replay()
    torch.cuda.synchronize()
    again = be.apply(p, x)
    assert same_bits(out, again), (name, kernel, m)
    assert not same_bits(out, eager)


@pytest.mark.parametrize("name,kernel,m", [("w8a8_dynamic", None, 16), ("mxfp4", "cuda.mx", 8),
                                           ("mxfp8", "cuda.mx_fp8tc", 300), ("mxfp4_dual", None, 4)], ids=str)
def test_torch_compile_custom_op(name, kernel, m, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    if kernel == "cuda.mx_fp8tc" and not SM90:
        pytest.skip("SM90 only")
    be, p = _prep(name, kernel)
    torch._dynamo.reset()

    def f(x):
        return be.apply(p, x * 2.0) + 1.0

    cf = torch.compile(f, fullgraph=True)
    x = torch.randn(m, p.k, device=DEV, dtype=torch.bfloat16)
    assert same_bits(cf(x), f(x))
    x2 = torch.randn(m + 3, p.k, device=DEV, dtype=torch.bfloat16)
    assert same_bits(cf(x2), f(x2))


# ---------------------------------------------------------------------------------------------
# activation quantizer "v2" (jit/fp8tc_quant2.py), the default since 2026-12-02 (v1: fp8tc_quant="v1").
# Its first version (commit 0f36ec5) wrote wrong E4M3 bytes xr here on the H200 (2026-12-02) when the MX bytes
# were written too: a ptxas miscompile (docs/cuda.md); these tests are the ones that failed, adapted.
# ---------------------------------------------------------------------------------------------
from omni_npu_quant.kernels.cuda.jit import fp8tc_quant2 as q2  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fmt,rm,alg", [(E4M3, "rint", 0), (E4M3, "rint", 1), (E2M1, "rint", 0), (E2M1, "round", 1),
                                        (E2M1, "floor", 2)], ids=str)
def test_v2_rowwise_quant_bytes(dtype, fmt, rm, alg):
    """One-pass plans (Kp 512 / 4096; K 333 masked), one row and several rows per program, with and without
    smoothing: q, codes, xr and the row scale identical to the twin; the apply path's xr / scale equal."""
    for k in (512, 333, 4096):
        kp = -(-k // 256) * 256
        x = edge_rows(k, dtype, seed=k + alg)
        sm = torch.rand(k, generator=_g(5)) + 0.5
        for smooth in (None, sm):
            for plan in (q2.rowwise_plan(kp), q2.rowwise_plan(kp, 1)):
                what = (k, smooth is None, plan.pick(x.shape[0]))
                s = None if smooth is None else smooth.to(DEV)
                a = q2.mx_quant_rowwise(x.to(DEV), s, fmt, rm, alg, kp, plan=plan)
                b = twins.twin_mx_quant_rowwise(x, smooth, fmt, rm, alg, kp)
                for u, v, name in zip(a[:3], b[:3], ("q", "codes", "xr")):
                    assert torch.equal(u.cpu(), v), (name, what)
                assert same_bits(a[3].cpu(), b[3]), what
                n = q2.mx_quant_rowwise(x.to(DEV), s, fmt, rm, alg, kp, plan=plan, write_mx=False)
                assert torch.equal(n[2], a[2]) and same_bits(n[3], a[3]), what


import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _convert_kernel(v_ptr, o_ptr, c_ptr, N, ROUND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    v = tl.load(v_ptr + offs, mask=m)
    tl.store(o_ptr + offs, q2._e2m1_elements(v, ROUND), mask=m)
    tl.store(c_ptr + offs, v.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=m)


@needs_sm90
def test_v2_element_roundings_on_every_fp32():
    """The v2 quantizer's element roundings on this GPU against numerics.elements for every fp32 bit pattern but NaN
    (which the kernel never converts): the FP8 convert (cvt.rn.satfinite.e4m3x2.f32) = E4M3 "rint" with
    saturation, and fp8tc_quant2._e2m1_elements = E2M1 rint / round / floor."""
    from omni_npu_quant.numerics import mx as MX
    from omni_npu_quant.numerics.elements import quantize_elements_

    chunk = 1 << 27
    o = torch.empty(chunk, device=DEV)
    c = torch.empty(chunk, dtype=torch.uint8, device=DEV)
    for start in range(-(1 << 31), 1 << 31, chunk):
        v = torch.arange(start, start + chunk, dtype=torch.int32, device=DEV).view(torch.float32)
        v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
        for rnd, rm in enumerate(("rint", "round", "floor")):
            _convert_kernel[(chunk // 4096,)](v, o, c, chunk, ROUND=rnd, BLOCK=4096)
            ref = quantize_elements_(v.clone(), E2M1, rm)
            bad = o.view(torch.int32) != ref.view(torch.int32)
            assert not bool(bad.any()), ("e2m1", rm, v[bad][:4].tolist(), o[bad][:4].tolist(), ref[bad][:4].tolist())
            if rnd == 0:
                ref8 = MX.mx_encode(quantize_elements_(v.clone(), E4M3, "rint"), E4M3).view(torch.uint8)
                bad = c != ref8
                assert not bool(bad.any()), ("e4m3", v[bad][:4].tolist(), c[bad][:4].tolist(), ref8[bad][:4].tolist())


def _corner_rows(k, dtype, seed):
    """Blocks with a normal max next to tiny values of both signs (x * 2**-e underflows), a zero block, -0."""
    x = torch.randn(3, k, generator=_g(seed))
    x[:, 0] = 16.0
    if dtype != torch.float16:
        x[0, 1:8] = torch.tensor([-1.401298464324817e-45, 1.401298464324817e-45, -2.0 ** -140, -1e-39, 1e-39, -3e-41,
                                  2.0 ** -126])
    x[1, 32:64] = 0.0
    x[2, 5] = -0.0
    return x.to(dtype)


def _same_quant(a, b, what):
    for u, v, name in zip(a[:3], b[:3], ("q", "codes", "xr")):
        if not torch.equal(u, v.to(u.device)):
            bad = (u != v.to(u.device)).nonzero()
            raise AssertionError((name, what, f"{bad.shape[0]} bytes differ, first (row, col): {bad[:8].tolist()}"))
    assert same_bits(a[3], b[3].to(a[3].device)), ("row scale", what)


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_v2_rowwise_quant_bytes_real_sizes(dtype):
    """The long-K plans at real sizes: Kp 13824 (2048-wide chunks, masked tail; K 13800 odd), 12288, 3328
    (13 x 256), 8192 (one pass); M 0 / 1 / 3 / 17 / 4096; multi-row programs (n_sm=1) with row tails; the twin
    on the GPU for every row and on the CPU for a slice.  The first failure on 2026-12-02 was here: (13800, 4096,
    E4M3, rint, 0), xr."""
    every = [(E4M3, "rint", 0), (E4M3, "rint", 1), (E2M1, "rint", 0), (E2M1, "round", 1), (E2M1, "floor", 2)]
    two = [every[0], every[3]]  # the schemes' own: mxfp8 / w4a8_mxfp and mxfp4
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    for k, ms in ((13800, (4096, 3)), (12288, (1, 17)), (3104, (301,)), (8192, (0, 64))):
        kp = -(-k // 256) * 256
        edge = torch.cat([edge_rows(k, dtype, seed=k), _corner_rows(k, dtype, k)])
        fmts = every if dtype == torch.bfloat16 and k in (13800, 3104) else two
        for m in ms:
            x = (torch.randn(m, k, generator=_g(m + k)) * 3).to(dtype)
            x[: min(m, edge.shape[0])] = edge[: min(m, edge.shape[0])]
            xd = x.to(DEV)
            plans = [q2.rowwise_plan(kp, n_sm)] + ([q2.rowwise_plan(kp, 1)] if m == 301 else [])  # + row tails
            for fmt, rm, alg in fmts:
                for plan in plans:
                    what = (k, m, fmt.name, rm, alg, plan.pick(m))
                    a = q2.mx_quant_rowwise(xd, None, fmt, rm, alg, kp, plan=plan)
                    _same_quant(a, twins.twin_mx_quant_rowwise(xd, None, fmt, rm, alg, kp), what)
                    r = slice(0, min(m, 16))  # and the CPU twin on a slice (the edge rows)
                    _same_quant([t[r] for t in a], twins.twin_mx_quant_rowwise(x[r], None, fmt, rm, alg, kp), what)
                    n = q2.mx_quant_rowwise(xd, None, fmt, rm, alg, kp, plan=plan, write_mx=False)
                    assert n[0] is None and torch.equal(n[2], a[2]) and same_bits(n[3], a[3]), what
            if m >= 17:  # smoothing (bf16: the RNE narrowing of x * mul_scale)
                sm = torch.rand(k, generator=_g(7)) + 0.5
                for fmt, rm, alg in two:
                    a = q2.mx_quant_rowwise(xd, sm.to(DEV), fmt, rm, alg, kp)
                    _same_quant(a, twins.twin_mx_quant_rowwise(xd, sm.to(DEV), fmt, rm, alg, kp), (k, m, "smooth"))


@needs_sm90
@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "w4a8_mxfp"])
def test_v2_backend_same_as_v1_quantizer(name):
    """CudaBackend() (quantizer v2, the default): quantize_activation reports the reference's bytes, and apply gives
    quantizer v1's output bit for bit (the same E4M3 bytes and row scales into the same GEMM), at the bench's shapes."""
    g = _g(13)
    scheme = get_scheme(name)
    ref, dflt, v2 = ReferenceBackend(), CudaBackend(fp8tc_quant="v1"), CudaBackend()
    for n, k, mlist in ((256, 13824, (17, 300, 4096)), (512, 3072, (33, 4096)), (320, 1056, (1, 16, 17, 1100))):
        t = _layer(scheme, n, k, g, edge=True)
        pr, pd, pv = (be.prepare(scheme, t, torch.bfloat16) for be in (ref, dflt, v2))
        assert pv.kernel_name == pd.kernel_name == "cuda.mx_fp8tc" and pv.q_plan is not None and pd.q_plan is None
        for m in mlist:
            x = (torch.randn(m, k, generator=g) * 2).to(torch.bfloat16)
            e = torch.cat([edge_rows(k, torch.bfloat16, nonfinite=False, seed=m), _corner_rows(k, torch.bfloat16, m)])
            x[: min(m, e.shape[0])] = e[: min(m, e.shape[0])]
            qa, qv = ref.quantize_activation(pr, x), v2.quantize_activation(pv, x)
            for key in qa:
                assert same_bits(qv[key].cpu(), qa[key]), (key, n, k, m)
            yd, yv = dflt.apply(pd, x), v2.apply(pv, x)
            assert same_bits(yv, yd), (n, k, m, (yv.float() - yd.float()).abs().max().item())


@needs_sm90
def test_v2_cuda_graph_capture(monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    scheme = get_scheme("mxfp8")
    g = _g(7)
    t = scheme.quantize_weight(torch.randn(256, 13824, generator=g) * 0.05, torch.randn(256, generator=g))
    be = CudaBackend(fp8tc_quant="v2")
    p = be.prepare(scheme, t, torch.bfloat16)
    x = torch.randn(300, p.k, device=DEV, dtype=torch.bfloat16)
    eager = be.apply(p, x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = be.apply(p, x)
    x.copy_(torch.randn(300, p.k, device=DEV, dtype=torch.bfloat16))
    graph.replay()
    torch.cuda.synchronize()
    assert same_bits(out, be.apply(p, x)) and not same_bits(out, eager)
