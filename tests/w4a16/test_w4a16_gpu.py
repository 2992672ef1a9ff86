"""W4A16 CUDA kernel on a GPU: the Triton GEMM against its pure-torch twin (fp32 summation-order
tolerance) and the backend against the exact reference, per channel / per group, symmetric /
asymmetric, act-order, decode and prefill M.

Run: python -m pytest tests/w4a16/test_w4a16_gpu.py -m gpu -q
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():  # the conftest skips too; this keeps the imports below off CPU CI
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from omni_npu_quant.backends import CudaBackend, ReferenceBackend  # noqa: E402
from omni_npu_quant.kernels.cuda.jit import w4a16 as J  # noqa: E402
from omni_npu_quant.kernels.cuda.w4a16 import twin_w4a16_gemm  # noqa: E402
from omni_npu_quant.schemes import get_scheme  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 16, 33, 300, 2048])
@pytest.mark.parametrize("gs,sym,perm", [(0, True, False), (32, False, False), (64, True, True), (128, False, False)])
def test_kernel_vs_twin_and_reference(dtype, m, gs, sym, perm):
    gen = torch.Generator().manual_seed(m + gs)
    n, k = 384, 1024
    w = torch.randn(n, k, generator=gen)
    ts = get_scheme("w4a16", group_size=gs, symmetric=sym).quantize_weight(w, torch.randn(n, generator=gen))
    if perm:
        ts["input_perm"] = torch.randperm(k, generator=gen).to(torch.int32)
    s = get_scheme("w4a16")
    x = torch.randn(m, k, generator=gen).to(dtype)
    be = CudaBackend("cuda")
    p = be.prepare(s, ts, dtype)
    assert p.kernel_name == "cuda.w4a16"
    out = be.apply(p, x.cuda())
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    xs = x if not perm else x[:, ts["input_perm"].long()]
    twin = twin_w4a16_gemm(xs.cuda(), p.qweight, p.scale, p.zp, p.group_k, p.bias)
    tol = 2 * torch.finfo(dtype).eps * float(twin.float().abs().max())
    assert float((out.float() - twin.float()).abs().max()) <= tol
    ref = ReferenceBackend()
    r = ref.apply(ref.prepare(s, ts, torch.float32), x.float())
    assert float((out.float().cpu() - r).norm() / r.norm()) < 1e-2


def test_cuda_graph_capture():
    gen = torch.Generator().manual_seed(0)
    ts = get_scheme("w4a16", group_size=128).quantize_weight(torch.randn(512, 512, generator=gen))
    be = CudaBackend("cuda")
    p = be.prepare(get_scheme("w4a16"), ts, torch.bfloat16)
    x = torch.randn(4, 512, generator=gen).to(torch.bfloat16).cuda()
    y0 = be.apply(p, x)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = p.kernel.apply(p, x)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, y0)
