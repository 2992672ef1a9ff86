"""cuda.mx_fp8tc_dual (opt-in dual-scale MXFP4 on FP8 tensor cores) on a GPU (SM90): the chunk rescale's bytes and
scales vs its twin, the chunk-scaled FP8 GEMM vs its twin, the backend vs the reference backend within E2 (bf16 /
fp16, odd shapes, NaN / Inf rows, the bench shapes N x K 8192 x 8192 and 5120 x 13824 at M 17 / 300 / 4096), CUDA-graph
capture and torch.compile fullgraph.  Written with the kernel; not yet run on a GPU.

Run: python -m pytest tests/backends/cuda/test_fp8tc_dual_gpu.py -m gpu -q
"""
from __future__ import annotations

import pytest
import torch

from _cuda_cases import edge_rows, same_bits
from omni_npu_quant.backends import ReferenceBackend
from omni_npu_quant.schemes.registry import get_scheme

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from omni_npu_quant.backends import CudaBackend  # noqa: E402
from omni_npu_quant.kernels.cuda.jit import fp8tc_dual as D  # noqa: E402

DEV = "cuda"
SM90 = torch.cuda.get_device_capability()[0] == 9
needs_sm90 = pytest.mark.skipif(not SM90, reason="cuda.mx_fp8tc_dual is SM90 only")
SCHEME = get_scheme("mxfp4_dual")


def _g(s):
    return torch.Generator().manual_seed(s)


def _e2(y, yr, dt):
    """max |y - ref| / (1e-3 * max|ref| + 1 ulp of dt), NaN where the reference's are (inf otherwise)."""
    nan = torch.isnan(yr)
    if not torch.equal(torch.isnan(y), nan):
        return float("inf")
    y, yr = y[~nan], yr[~nan]
    if yr.numel() == 0:
        return 0.0
    tol = 1e-3 * yr.abs().max().item() + (torch.finfo(dt).eps * yr.abs()).max().item()
    return (y - yr).abs().max().item() / tol


def _rows(k, dt, seed):
    x = edge_rows(k, dt, seed=seed)
    g = _g(seed)
    extra = torch.randn(3, k, generator=g) * 2
    extra[0, 448:480] = 0.0  # an all-zero block
    extra[1, :512] = 0.0  # an all-zero chunk
    extra[2, :512] *= 2.0 ** ((torch.arange(512) // 32) * 4 // 3 - 20).float()  # blocks over 20 binades
    return torch.cat([x, extra.to(dt)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("k", [512, 1536, 13824])
def test_chunk_rescale_bytes(dtype, k):
    x = _rows(k, dtype, k)
    sm = (torch.rand(k, generator=_g(1)) + 0.5).to(dtype)
    for smooth in (None, sm):
        for rm in ("rint", "round"):
            a = D.dual_quant_chunkwise(x.to(DEV), None if smooth is None else smooth.to(DEV), rm)
            b = D.twin_dual_quant_chunkwise(x, smooth, rm)
            for u, v, what in zip(a, b, ("q", "codes", "l0", "xr", "sa")):
                assert same_bits(u.cpu().contiguous(), v.contiguous()), (what, smooth is None, rm)


@needs_sm90
@pytest.mark.parametrize("m,n,kp", [(17, 64, 512), (33, 333, 1536), (300, 1000, 2048), (4096, 512, 4096)])
def test_chunk_gemm_vs_twin(m, n, kp):
    g = _g(m + n)
    nc = kp // 512
    xr = (torch.randn(m, kp, generator=g) * 30).to(torch.float8_e4m3fn).view(torch.uint8)
    wr = (torch.randn(n, kp, generator=g) * 30).to(torch.float8_e4m3fn).view(torch.uint8)
    sa = torch.rand(m, nc, generator=g) * 2.0 ** torch.randint(-14, -4, (m, nc), generator=g).float()
    sw = torch.rand(n, nc, generator=g) * 2.0 ** torch.randint(-14, -4, (n, nc), generator=g).float()
    xr[1, :512] = 0
    sa[1, 0] = 0.0  # an all-zero chunk
    sa[2, nc - 1] = float("nan")  # a NaN chunk: its row is NaN
    b = torch.randn(n, generator=g)
    r = D.twin_fp8_chunk_gemm(xr, sa, wr, sw, torch.float32, bias=b)
    for od in (torch.float32, torch.bfloat16, torch.float16):
        o = D.fp8_chunk_gemm(xr.to(DEV), sa.t().contiguous().t().to(DEV), wr.to(DEV), sw.to(DEV), n, kp, od,
                             bias=b.to(DEV)).cpu()
        assert o.dtype == od
        assert _e2(o.float(), r, od) <= 1.0, (od, _e2(o.float(), r, od))


def _layer(n, k, g, mul_scale=False):
    w = torch.randn(n, k, generator=g) * 0.05
    w[1] = 0.0
    w[2, :512] *= 2.0 ** ((torch.arange(512) // 32) * 4 // 3 - 20).float()  # an inexact weight chunk
    t = SCHEME.quantize_weight(w, torch.randn(n, generator=g))
    if mul_scale:
        t["mul_scale"] = torch.rand(k, generator=g) + 0.5
    return t


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("n,k,ms,mlist", [(333, 1024, False, (1, 16, 17, 33, 1100)), (256, 1536, True, (17, 300)),
                                          (8192, 8192, False, (17, 300, 4096)), (5120, 13824, False, (17, 300, 4096))],
                         ids=["333x1024", "256x1536-smooth", "8192x8192", "5120x13824"])
def test_backend_vs_reference(dtype, n, k, ms, mlist):
    g = _g(n + k)
    t = _layer(n, k, g, ms)
    ref, cuda = ReferenceBackend(), CudaBackend(mx_fp8tc_dual="on")
    pr, pc = ref.prepare(SCHEME, t, dtype), cuda.prepare(SCHEME, t, dtype)
    assert pc.kernel_name == "cuda.mx_fp8tc_dual"
    assert CudaBackend().prepare(SCHEME, t, dtype).kernel_name == "cuda.mx"  # off by default
    for m in mlist:
        x = (torch.randn(m, k, generator=g) * 2).to(dtype)
        if m >= 16:
            x[0] = edge_rows(k, dtype, nonfinite=False, seed=m)[3]  # ties
            x[1] = 0.0
            x[2, :512] *= (2.0 ** ((torch.arange(512) // 32) * 4 // 3 - 20).float()).to(dtype)
            x[3, 7] = float("nan")
            x[4, k - 1] = float("inf")
        qa, qc = ref.quantize_activation(pr, x), cuda.quantize_activation(pc, x)
        for key in qa:
            assert same_bits(qc[key].cpu(), qa[key]), (key, m)
        yr, yc = ref.apply(pr, x).float(), cuda.apply(pc, x).cpu()
        assert yc.dtype == dtype
        assert _e2(yc.float(), yr, dtype) <= 1.0, (n, k, m, _e2(yc.float(), yr, dtype))


def _prep(n=256, k=1024, dtype=torch.bfloat16):
    g = _g(7)
    be = CudaBackend(kernel="cuda.mx_fp8tc_dual", mx_fp8tc_dual="on")
    p = be.prepare(SCHEME, SCHEME.quantize_weight(torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g)),
                   dtype)
    assert p.kernel_name == "cuda.mx_fp8tc_dual"
    return be, p


@needs_sm90
@pytest.mark.parametrize("m", [4, 17, 300])
def test_cuda_graph_capture(m, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    be, p = _prep()
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
    assert same_bits(out, again), m
    assert not same_bits(out, eager)


@needs_sm90
@pytest.mark.parametrize("m", [4, 300])
def test_torch_compile_fullgraph(m, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    be, p = _prep()
    torch._dynamo.reset()

    def f(x):
        return be.apply(p, x * 2.0) + 1.0

    cf = torch.compile(f, fullgraph=True)
    x = torch.randn(m, p.k, device=DEV, dtype=torch.bfloat16)
    assert same_bits(cf(x), f(x))
    x2 = torch.randn(m + 3, p.k, device=DEV, dtype=torch.bfloat16)
    assert same_bits(cf(x2), f(x2))
