"""kernels/cuda/jit/launch.py on a GPU: outputs with the fast launch on are bit-identical to Triton's
own launch for every CUDA kernel and scheme at M in {1, 16, 300}; every scheme path (fast launch on)
captured in a CUDA graph and replayed; a small model of QuantLinear layers under torch.compile
(fullgraph).

Run: python -m pytest tests/backends/cuda/test_launch_gpu.py -m gpu -q
"""
from __future__ import annotations

import pytest
import torch

from _cuda_cases import same_bits
from omni_npu_quant.schemes.registry import get_scheme

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from omni_npu_quant.backends import CudaBackend  # noqa: E402
from omni_npu_quant.kernels.base import KernelPrepareError  # noqa: E402
from omni_npu_quant.kernels.cuda.jit import launch, ops  # noqa: E402

DEV = "cuda"
SM90 = torch.cuda.get_device_capability()[0] == 9
# (scheme, pinned kernel or None = the GPU's first choice)
CASES = [("w8a8_dynamic", None), ("w8a8_static", None), ("w8a16", None), ("mxfp8", None), ("mxfp8", "cuda.mx"),
         ("mxfp4", None), ("mxfp4", "cuda.mx"), ("w4a8_mxfp", None), ("w4a8_mxfp", "cuda.mx"), ("mxfp4_dual", None),
         ("w4a16", None), ("w8a8_dynamic_svd", None), ("mxfp4_svd", None)]


def _prep(name, kernel, n=256, k=1024, dtype=torch.bfloat16, seed=7):
    scheme = get_scheme(name)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    kw = {"act_min": -4.0, "act_max": 5.0} if name == "w8a8_static" else {}
    t = scheme.quantize_weight(w, torch.randn(n, generator=g), **kw)
    if name == "w8a8_static":
        t.pop("weight_offset", None)
    be = CudaBackend(kernel=kernel)
    return be, be.prepare(scheme, t, dtype)


@pytest.fixture(autouse=True)
def _fast_on():
    assert launch.ENABLED, launch.WHY_OFF  # Triton 3.6 on a GPU: the fast path must be available
    launch.set_enabled(True)
    yield
    launch.set_enabled(True)


def _cached():
    return sum(len(fk.cache) for fk in launch._REGISTRY.values())


@pytest.mark.parametrize("name,kernel", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_launch_bit_identical(name, kernel, dtype, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    if kernel is None and name in ("mxfp8", "mxfp4", "w4a8_mxfp") and not SM90:
        pytest.skip("first choice differs off SM90; the cuda.mx rows cover it")
    try:
        be, p = _prep(name, kernel, dtype=dtype)
    except KernelPrepareError as e:  # the backend's own refusal (named reason): nothing to compare
        pytest.skip(f"{name} / {kernel} / {dtype}: {e}")
    g = torch.Generator().manual_seed(3)
    for m in (1, 16, 300):
        x = (torch.randn(m, p.k, generator=g) * 2).to(dtype).to(DEV)
        launch.set_enabled(False)
        off = be.apply(p, x)
        off2 = be.apply(p, x)
        launch.set_enabled(True)
        on1 = be.apply(p, x)  # first: Triton's launch (fills the cache)
        on2 = be.apply(p, x)  # then the direct launches
        on3 = be.apply(p, x[:, :].contiguous())
        torch.cuda.synchronize()
        assert same_bits(off, off2), (name, m, "Triton's own launch is not deterministic here")
        for o in (on1, on2, on3):
            assert same_bits(o, off), (name, kernel, m)
    if p.kernel_name.startswith("cuda."):
        assert _cached() > 0, "no launch went through the fast path"


def test_fast_launch_misaligned_input():
    """An input whose data pointer is not 16-byte aligned gets its own specialization (no silent reuse)."""
    be, p = _prep("w8a8_dynamic", None)
    buf = torch.randn(2 * p.k + 8, device=DEV, dtype=torch.bfloat16)
    x_al = buf[: p.k].view(1, p.k)
    x_mis = buf[1: p.k + 1].view(1, p.k)  # 2-byte offset
    launch.set_enabled(False)
    ref_al, ref_mis = be.apply(p, x_al), be.apply(p, x_mis)
    launch.set_enabled(True)
    for _ in range(2):
        assert same_bits(be.apply(p, x_al), ref_al)
        assert same_bits(be.apply(p, x_mis), ref_mis)


@pytest.mark.parametrize("name,kernel", CASES, ids=str)
@pytest.mark.parametrize("m", [1, 300])
def test_cuda_graph_every_scheme(name, kernel, m, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    be, p = _prep(name, kernel)
    x = torch.randn(m, p.k, device=DEV, dtype=torch.bfloat16)
    eager = be.apply(p, x)
    be.apply(p, x)  # the second eager call runs the direct launches
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


@pytest.mark.parametrize("name", ["w8a8_dynamic", "mxfp4", "mxfp4_dual", "w4a16"])
def test_torch_compile_quantlinear_model(name, monkeypatch):
    from omni_npu_quant.integrations.torch.module import QuantLinear

    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    scheme = get_scheme(name)
    g = torch.Generator().manual_seed(5)
    k, h = 512, 1024  # both K multiples of 512 (mxfp4_dual's group; 768 made the second layer invalid)

    def ql(n, kk):
        t = scheme.quantize_weight(torch.randn(n, kk, generator=g) * 0.05, torch.randn(n, generator=g))
        return QuantLinear(scheme, {s: v.to(DEV) for s, v in t.items()}, backend=CudaBackend(),
                           act_dtype=torch.bfloat16)

    # ReLU, not GELU: Inductor's generated GELU and eager's differ by an ulp on some inputs (CPU and, 2026-12-02,
    # the H200: w4a16 / mxfp4_dual failed here), which is not what this test is about; ReLU is exact in both
    model = torch.nn.Sequential(ql(h, k), torch.nn.ReLU(), ql(k, h)).to(DEV)
    assert all(m.prepared.kernel_name.startswith("cuda.") for m in (model[0], model[2]))
    torch._dynamo.reset()
    cm = torch.compile(model, fullgraph=True)
    for m in (1, 7, 300):
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        assert same_bits(cm(x), model(x)), (name, m)
