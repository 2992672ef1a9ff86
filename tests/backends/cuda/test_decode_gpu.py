"""Small-M split-K MX decode kernel (backends/cuda/decode.py): against its twin (twins.twin_mx_gemm),
against the tl.dot_scaled kernel it replaces, and the whole backend against the reference backend for
M = 1..16.  Products are exact; only fp32 summation order differs (tolerance 1e-5 * max|ref|).

GPU: python -m pytest tests/backends/cuda/test_decode_gpu.py -m gpu -q
The last test runs the kernel on the CPU in Triton's interpreter (subprocess; needs triton).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omni_npu_quant.numerics.constants import E2M1, E4M3
from omni_npu_quant.schemes.registry import get_scheme

gpu = pytest.mark.gpu
HAS_CUDA = torch.cuda.is_available()
DEV = "cuda"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FMTS = [(E4M3, E4M3), (E2M1, E2M1), (E4M3, E2M1)]
FMT_IDS = ["mxfp8", "mxfp4", "w4a8"]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _tol(r):
    return 1e-5 * r.float().abs().amax().clamp(min=1.0).item() + 1e-6


def _mods():
    from omni_npu_quant.kernels.cuda.jit import decode, ops, twins

    return decode, ops, twins


@gpu
@pytest.mark.parametrize("afmt,wfmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("n,k", [(333, 800), (256, 96), (1000, 4096)])
def test_decode_vs_twin(afmt, wfmt, n, k):
    decode, ops, twins = _mods()
    kp = -(-k // 256) * 256
    g = _g(n + k)
    w = torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    wq, wsc, _ = twins.twin_mx_quant(w, None, wfmt, "rint", 0, kp)
    d = lambda t: t.to(DEV)  # noqa: E731
    for m in range(1, 17):
        x = torch.randn(m, k, generator=g) * (10.0 if m % 3 == 0 else 1.0)
        aq, asc, _ = twins.twin_mx_quant(x, None, afmt, "rint", 0, kp)
        for b in (bias, None):
            r32 = twins.twin_mx_gemm(aq, asc, wq, wsc, n, kp, torch.float32, afmt, wfmt, bias=b)
            for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
                o = decode.mx_gemm_decode(d(aq), d(asc), d(wq), d(wsc), n, kp, out_dtype, afmt is E2M1, wfmt is E2M1,
                                          bias=None if b is None else d(b)).cpu()
                assert o.dtype == out_dtype and o.shape == (m, n)
                if out_dtype == torch.float32:
                    assert (o - r32).abs().max().item() <= _tol(r32), (m, b is None)
                else:  # one rounding of a value within the fp32 tolerance
                    tol = _tol(r32) + (torch.finfo(out_dtype).eps * r32.abs()).amax().item()
                    assert (o.float() - r32).abs().max().item() <= tol, (m, out_dtype)


@gpu
@pytest.mark.parametrize("n,k", [(257, 1536), (4096, 4096)])
def test_decode_dual_vs_twin(n, k):
    decode, ops, twins = _mods()
    g = _g(k)
    w = torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    wq, wsc, l0w = twins.twin_dual_quant(w, None, "rint")
    d = lambda t: t.to(DEV)  # noqa: E731
    for m in range(1, 17):
        x = torch.randn(m, k, generator=g) * 3
        aq, asc, l0 = twins.twin_dual_quant(x, None, "rint")
        for b in (bias, None):
            o = decode.mx_gemm_decode(d(aq), d(asc), d(wq), d(wsc), n, k, torch.float32, True, True,
                                      bias=None if b is None else d(b), l0x=d(l0), l0w=d(l0w)).cpu()
            r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, E2M1, E2M1, bias=b, l0x=l0, l0w=l0w)
            assert (o - r).abs().max().item() <= _tol(r), m


@gpu
def test_decode_edge_values():
    """Zero blocks, NaN scale code 255, a tiny (code 1) and a huge (code 254) scale, NaN E4M3 bytes."""
    decode, ops, twins = _mods()
    n, kp = 67, 512
    g = _g(7)
    for afmt, wfmt in FMTS:
        w = torch.randn(n, kp, generator=g)
        w[3] = 0.0
        wq, wsc, _ = twins.twin_mx_quant(w, None, wfmt, "rint", 0, kp)
        x = torch.randn(5, kp, generator=g)
        x[1] = 0.0
        aq, asc, _ = twins.twin_mx_quant(x, None, afmt, "rint", 0, kp)
        wsc[5, 2] = 255  # NaN scale -> NaN row 5
        wsc[6, :] = 1  # 2**-126: tiny but normal
        asc[2, :] = 140
        wsc[7, :] = 110
        o = decode.mx_gemm_decode(aq.to(DEV), asc.to(DEV), wq.to(DEV), wsc.to(DEV), n, kp, torch.float32,
                                  afmt is E2M1, wfmt is E2M1).cpu()
        r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, kp, torch.float32, afmt, wfmt)
        assert torch.equal(torch.isnan(o), torch.isnan(r))
        fin = ~torch.isnan(r)
        assert (o[fin] - r[fin]).abs().max().item() <= _tol(r[fin])
        assert (o[1][fin[1]] == 0).all() and (o[:, 3] == 0).all()


@gpu
@pytest.mark.parametrize("afmt,wfmt", FMTS, ids=FMT_IDS)
def test_decode_matches_dot_scaled_path(afmt, wfmt, monkeypatch):
    decode, ops, twins = _mods()
    n, k = 384, 1024
    g = _g(3)
    wq, wsc, _ = twins.twin_mx_quant(torch.randn(n, k, generator=g), None, wfmt, "rint", 0, k)
    aq, asc, _ = twins.twin_mx_quant(torch.randn(16, k, generator=g), None, afmt, "rint", 0, k)
    args = [t.to(DEV) for t in (aq, asc, wq, wsc)]
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_DECODE", "1")
    assert decode.enabled(wfmt is E2M1, n, k)
    new = ops.mx_gemm(*args, n, k, torch.float32, afmt, wfmt)
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_DECODE", "0")
    assert not decode.enabled(wfmt is E2M1, n, k)
    old = ops.mx_gemm(*args, n, k, torch.float32, afmt, wfmt)
    assert (new - old).abs().max().item() <= 2 * _tol(old)


@gpu
@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backend_decode_vs_reference(name, dtype, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_DECODE", "1")
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.backends import ReferenceBackend

    scheme = get_scheme(name)
    g = _g(11)
    n, k = 333, (1024 if name == "mxfp4_dual" else 736)
    t = scheme.quantize_weight(torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g))
    ref, cud = ReferenceBackend(), CudaBackend(kernel="cuda.mx")  # the E1 decode path (fp8tc: test_fp8tc_gpu)
    pr = ref.prepare(scheme, t, dtype)
    pc = cud.prepare(scheme, t, dtype)
    for m in (1, 2, 5, 8, 13, 16):
        x = (torch.randn(m, k, generator=g) * 2).to(dtype)
        qc = cud.quantize_activation(pc, x.to(DEV))
        qr = ref.quantize_activation(pr, x)
        for key in qr:  # the activation bytes stay the fused quantizer's, identical to the reference
            a, b = qc[key].cpu(), qr[key]
            if a.dtype == torch.float8_e4m3fn:
                a, b = a.view(torch.uint8), b.view(torch.uint8)
            assert torch.equal(a, b), (key, m)
        yc = cud.apply(pc, x.to(DEV)).cpu().float()
        yr = ref.apply(pr, x).float()
        tol = 1e-5 * yr.abs().amax().item() + (torch.finfo(dtype).eps * yr.abs()).amax().item()
        assert (yc - yr).abs().max().item() <= tol, (m, (yc - yr).abs().max().item())


INTERP = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    from omni_npu_quant.kernels.cuda.jit import decode, twins
    from omni_npu_quant.numerics.constants import E2M1, E4M3
    g = torch.Generator().manual_seed(0)
    fails = []
    for afmt, wfmt in [(E4M3, E4M3), (E2M1, E2M1), (E4M3, E2M1)]:
        m, n, k = 3, 37, 512
        aq, asc, _ = twins.twin_mx_quant(torch.randn(m, k, generator=g), None, afmt, 'rint', 0, k)
        wq, wsc, _ = twins.twin_mx_quant(torch.randn(n, k, generator=g), None, wfmt, 'rint', 0, k)
        b = torch.randn(n, generator=g)
        o = decode.mx_gemm_decode(aq, asc, wq, wsc, n, k, torch.float32, afmt is E2M1, wfmt is E2M1, bias=b)
        r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, afmt, wfmt, bias=b)
        if (o - r).abs().max().item() > 1e-5 * r.abs().max().item():
            fails.append((afmt.name, wfmt.name))
    m, n, k = 2, 33, 1024
    aq, asc, l0 = twins.twin_dual_quant(torch.randn(m, k, generator=g) * 3, None, 'rint')
    wq, wsc, l0w = twins.twin_dual_quant(torch.randn(n, k, generator=g), None, 'rint')
    o = decode.mx_gemm_decode(aq, asc, wq, wsc, n, k, torch.float32, True, True, l0x=l0, l0w=l0w)
    r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, E2M1, E2M1, l0x=l0, l0w=l0w)
    if (o - r).abs().max().item() > 1e-5 * r.abs().max().item():
        fails.append('dual')
    print('FAILS', fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_decode_kernel_in_triton_interpreter():
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", INTERP], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]


def test_decode_switch_and_split():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed in this environment")
    from omni_npu_quant.kernels.cuda.jit import decode

    old = os.environ.pop("OMNI_NPU_QUANT_CUDA_DECODE", None)
    try:
        assert decode.enabled(False, 8192, 8192) and not decode.enabled(True, 8192, 8192)  # auto
        assert not decode.enabled(False, 4096, 4096)
        os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = "1"
        assert decode.enabled(True, 64, 64)
        os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = "0"
        assert not decode.enabled(False, 8192, 8192)
    finally:
        os.environ.pop("OMNI_NPU_QUANT_CUDA_DECODE", None)
        if old is not None:
            os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = old
    for n_tiles, kp, unit in [(128, 8192, 256), (64, 4096, 512), (1, 256, 256), (6, 4608, 512), (500, 1024, 256)]:
        ks, split = decode._split(n_tiles, kp, unit)
        assert ks % unit == 0 and (split - 1) * ks < kp <= split * ks


@gpu
@pytest.mark.parametrize("afmt,wfmt", FMTS + [("dual", "dual")], ids=FMT_IDS + ["dual"])
def test_decode_every_config(afmt, wfmt):
    """Every config the autotuner may pick (tile sizes, layouts, the GEMV variant) gives the twin's result."""
    decode, ops, twins = _mods()
    n, k = 300, 1024
    g = _g(5)
    dual = afmt == "dual"
    w = torch.randn(n, k, generator=g)
    if dual:
        wq, wsc, l0w = twins.twin_dual_quant(w, None, "rint")
    else:
        wq, wsc, _ = twins.twin_mx_quant(w, None, wfmt, "rint", 0, k)
    d = lambda t: t.to(DEV)  # noqa: E731
    for m in (1, 3, 16):
        x = torch.randn(m, k, generator=g)
        if dual:
            aq, asc, l0 = twins.twin_dual_quant(x, None, "rint")
            r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, E2M1, E2M1, l0x=l0, l0w=l0w)
            extra = dict(l0x=d(l0), l0w=d(l0w))
            fa = fw = True
        else:
            aq, asc, _ = twins.twin_mx_quant(x, None, afmt, "rint", 0, k)
            r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, afmt, wfmt)
            extra, fa, fw = {}, afmt is E2M1, wfmt is E2M1
        for cfg in decode.DECODE_TABLE + decode.GEMV_TABLE:
            if k % cfg[1] or (dual and 512 % cfg[1]):
                continue
            o = decode.mx_gemm_decode(d(aq), d(asc), d(wq), d(wsc), n, k, torch.float32, fa, fw,
                                      pick=lambda key, c, run, cfg=cfg: cfg, **extra).cpu()
            assert (o - r).abs().max().item() <= _tol(r), (m, cfg)
