"""GPU tests of the small-M kernels in kernels/cuda/jit/gemv.py (issue 14): MX against twins.twin_mx_gemm
(E1: 1e-5 * max|ref|, NaN pattern identical; bf16 / fp16 outputs one rounding more), int8 bit-identical to
twins.twin_int8_gemm and ops.int8_gemm, the backend with ``gemv=1`` against the reference backend (identical
activation bytes), and CUDA-graph capture of the new path.

GPU: python -m pytest tests/backends/cuda/test_gemv_gpu.py -m gpu -q
(CPU counterpart in Triton's interpreter: test_gemv_cpu.py.)
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from omni_npu_quant.numerics.constants import E2M1, E4M3
from omni_npu_quant.schemes.registry import get_scheme

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cuda_cases import edge_rows, same_bits  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda unavailable)")]
DEV = "cuda"
FMTS = [(E4M3, E4M3), (E2M1, E2M1), (E4M3, E2M1)]
FMT_IDS = ["mxfp8", "mxfp4", "w4a8"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _mods():
    from omni_npu_quant.kernels.cuda.jit import gemv, ops, twins

    return gemv, ops, twins


def _d(t):
    return None if t is None else t.to(DEV)


def _close(o, r32, out_dtype, what):
    """o (out_dtype, any device) vs the fp32 twin r32: NaN/Inf pattern identical, finite within E1 (+1 rounding)."""
    o = o.cpu().float()
    assert o.shape == r32.shape, what
    rr = r32 if out_dtype == torch.float32 else r32.to(out_dtype).float()
    assert torch.equal(torch.isnan(o), torch.isnan(rr)), what
    inf = torch.isinf(rr)
    assert torch.equal(o[inf], rr[inf]), what
    fin = torch.isfinite(rr)
    if fin.any():
        mx = r32[fin].abs().amax().clamp(min=1.0).item()
        tol = 1e-5 * mx + 1e-6 + (0.0 if out_dtype == torch.float32 else torch.finfo(out_dtype).eps * mx)
        assert (o[fin] - rr[fin]).abs().max().item() <= tol, (what, (o[fin] - rr[fin]).abs().max().item(), tol)


@pytest.mark.parametrize("afmt,wfmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("n,k", [(333, 800), (256, 96), (1000, 4096)])
def test_mx_gemv_vs_twin(afmt, wfmt, n, k):
    gemv, ops, twins = _mods()
    kp = -(-k // 256) * 256
    g = _g(n + k)
    wq, wsc, _ = twins.twin_mx_quant(torch.randn(n, k, generator=g), None, wfmt, "rint", 0, kp)
    bias = torch.randn(n, generator=g)
    for m in range(1, 17):
        x = torch.randn(m, k, generator=g) * (10.0 if m % 3 == 0 else 1.0)
        aq, asc, _ = twins.twin_mx_quant(x, None, afmt, "rint", 0, kp)
        for b in (bias, None):
            r32 = twins.twin_mx_gemm(aq, asc, wq, wsc, n, kp, torch.float32, afmt, wfmt, bias=b)
            for od in DTYPES:
                for dot in ((None, True) if m <= 4 else (None,)):
                    o = gemv.mx_gemv(_d(aq), _d(asc), _d(wq), _d(wsc), n, kp, od, afmt is E2M1, wfmt is E2M1,
                                     bias=_d(b), dot=dot)
                    assert o.dtype == od
                    _close(o, r32, od, (m, od, b is None, dot))


def test_mx_gemv_edge_values():
    """Edge activations (ties, saturation, subnormals, zeros, NaN/Inf), zero weight rows, NaN scale 255,
    tiny (1) / large scale codes, NaN E4M3 weight bytes, odd N, K padded."""
    gemv, ops, twins = _mods()
    n, k, kp = 67, 333, 512
    g = _g(7)
    for afmt, wfmt in FMTS:
        w = torch.randn(n, k, generator=g)
        w[3] = 0.0
        wq, wsc, _ = twins.twin_mx_quant(w, None, wfmt, "rint", 0, kp)
        wsc[5, 2] = 255
        wsc[6, :] = 1
        wsc[7, :] = 150
        if wfmt is E4M3:
            wq[8, 10] = 0x7F
        x = torch.cat([edge_rows(k, torch.float32, seed=1), torch.randn(16, k, generator=g)])[:16]
        for m in (1, 3, 4, 9, 16):
            aq, asc, _ = twins.twin_mx_quant(x[:m], None, afmt, "rint", 0, kp)
            r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, kp, torch.float32, afmt, wfmt)
            for od in DTYPES:
                o = gemv.mx_gemv(_d(aq), _d(asc), _d(wq), _d(wsc), n, kp, od, afmt is E2M1, wfmt is E2M1)
                _close(o, r, od, (afmt.name, wfmt.name, m, od))
            assert (o.cpu()[:, 3] == 0).all() or torch.isnan(r[:, 3]).any()


@pytest.mark.parametrize("n,k", [(257, 1536), (4096, 4096)])
def test_mx_gemv_dual_vs_twin(n, k):
    gemv, ops, twins = _mods()
    g = _g(k)
    wq, wsc, l0w = twins.twin_dual_quant(torch.randn(n, k, generator=g), None, "rint")
    bias = torch.randn(n, generator=g)
    for m in range(1, 17):
        aq, asc, l0 = twins.twin_dual_quant(torch.randn(m, k, generator=g) * 3, None, "rint")
        for b in (bias, None):
            r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, E2M1, E2M1, bias=b, l0x=l0, l0w=l0w)
            o = gemv.mx_gemv(_d(aq), _d(asc), _d(wq), _d(wsc), n, k, torch.float32, True, True, bias=_d(b),
                             l0x=_d(l0), l0w=_d(l0w))
            _close(o, r, torch.float32, (m, b is None))


@pytest.mark.parametrize("afmt,wfmt", FMTS, ids=FMT_IDS)
def test_mx_gemv_every_config(afmt, wfmt):
    gemv, ops, twins = _mods()
    n, k = 300, 1024
    g = _g(5)
    wq, wsc, _ = twins.twin_mx_quant(torch.randn(n, k, generator=g), None, wfmt, "rint", 0, k)
    for m in (1, 2, 3, 8, 16):
        aq, asc, _ = twins.twin_mx_quant(torch.randn(m, k, generator=g), None, afmt, "rint", 0, k)
        r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, afmt, wfmt)
        for cfgs in gemv.MX_CONFIGS.values():
            for cfg in cfgs:
                for dot in ((False, True) if m <= 4 else (True,)):
                    o = gemv.mx_gemv(_d(aq), _d(asc), _d(wq), _d(wsc), n, k, torch.float32, afmt is E2M1,
                                     wfmt is E2M1, cfg=cfg, dot=dot)
                    _close(o, r, torch.float32, (m, cfg, dot))


@pytest.mark.parametrize("n,k", [(40, 200), (333, 1000), (1024, 4096)])
def test_int8_gemv_bit_identical(n, k):
    gemv, ops, twins = _mods()
    g = _g(n)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    w[0] = 127
    ws, b = torch.rand(n, 1, generator=g), torch.randn(n, generator=g)
    qb, deq = torch.randint(-900, 900, (n,), generator=g, dtype=torch.int32), torch.rand(n, generator=g) * 1e-3
    for m in range(1, 17):
        q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        q[0] = -127
        sx = torch.rand(m, generator=g)
        for od in DTYPES:
            for bb in (b, None):
                r = twins.twin_int8_gemm(q, w, od, sx=sx, ws=ws, bias=bb)
                old = ops.int8_gemm(_d(q), _d(w), od, sx=_d(sx), ws=_d(ws), bias=_d(bb)).cpu()
                for cfg in [None] + gemv.INT8_CONFIGS[gemv.m_block(m)][1:]:
                    for dot in ((None, True) if m <= 4 else (None,)):
                        o = gemv.int8_gemv(_d(q), _d(w), od, sx=_d(sx), ws=_d(ws), bias=_d(bb), cfg=cfg, dot=dot).cpu()
                        assert same_bits(o, r) and same_bits(o, old), (m, od, bb is None, cfg, dot)
            for qbb in (qb, None):
                r = twins.twin_int8_gemm(q, w, od, quant_bias=qbb, deq=deq, static=True)
                o = gemv.int8_gemv(_d(q), _d(w), od, quant_bias=_d(qbb), deq=_d(deq), static=True).cpu()
                assert same_bits(o, r), (m, od, qbb is None)


def test_int8_gemv_refuses_groups():
    gemv, ops, twins = _mods()
    q = torch.zeros(2, 256, dtype=torch.int8, device=DEV)
    w = torch.zeros(8, 256, dtype=torch.int8, device=DEV)
    with pytest.raises(ValueError, match="per-channel"):
        gemv.int8_gemv(q, w, torch.float32, sx=torch.ones(2, device=DEV), ws=torch.ones(8, 2, device=DEV))


def _layer(scheme, n, k, g):
    w = torch.randn(n, k, generator=g) * 0.05
    b = torch.randn(n, generator=g)
    if scheme.name == "w8a8_static":
        t = scheme.quantize_weight(w, b, act_min=-4.0, act_max=5.0)
        t.pop("weight_offset", None)
    else:
        t = scheme.quantize_weight(w, b)
    return t


@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual", "w8a8_dynamic", "w8a8_static"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backend_gemv_vs_reference_and_graph(name, dtype):
    from omni_npu_quant.backends import CudaBackend, ReferenceBackend

    scheme = get_scheme(name)
    g = _g(11)
    n, k = 333, (1024 if name == "mxfp4_dual" else 736)
    t = _layer(scheme, n, k, g)
    mx = not name.startswith("w8a8")
    kern = "cuda.mx" if mx else None
    ref, new, old = ReferenceBackend(), CudaBackend(kernel=kern, gemv=1), CudaBackend(kernel=kern, gemv=0)
    pr, pn, po = ref.prepare(scheme, t, dtype), new.prepare(scheme, t, dtype), old.prepare(scheme, t, dtype)
    assert pn.gemv and not po.gemv
    for m in (1, 2, 5, 8, 13, 16):
        x = (torch.randn(m, k, generator=g) * 2).to(dtype)
        qn, qr = new.quantize_activation(pn, x.to(DEV)), ref.quantize_activation(pr, x)
        for key in qr:  # quantize_activation is what apply uses, identical to the reference
            assert same_bits(qn[key].cpu(), qr[key]), (key, m)
        yn, yr = new.apply(pn, x.to(DEV)).cpu().float(), ref.apply(pr, x).float()
        if mx:
            tol = 1e-5 * yr.abs().amax().item() + (torch.finfo(dtype).eps * yr.abs()).amax().item()
            assert (yn - yr).abs().max().item() <= tol, (m, (yn - yr).abs().max().item())
        else:  # E0: the same bits as the current int8 GEMM
            assert same_bits(yn.to(dtype), old.apply(po, x.to(DEV)).cpu()), m
            ulp = torch.finfo(dtype).eps * yr.abs().clamp(min=torch.finfo(dtype).tiny)
            assert ((yn - yr).abs() <= ulp).all(), m
    # CUDA-graph capture of the new path (M = 1 and 16), replayed on new inputs
    for m in (1, 16):
        xs = (torch.randn(m, k, generator=g) * 2).to(dtype).to(DEV)
        eager = new.apply(pn, xs).clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            new.apply(pn, xs)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = new.apply(pn, xs)
        graph.replay()
        torch.cuda.synchronize()
        assert same_bits(y.cpu(), eager.cpu()), m
        x2 = (torch.randn(m, k, generator=g) * 2).to(dtype).to(DEV)
        xs.copy_(x2)
        graph.replay()
        torch.cuda.synchronize()
        assert same_bits(y.cpu(), new.apply(pn, x2).cpu()), m
