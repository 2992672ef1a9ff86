"""``cuda.svd`` on a GPU: every SVD scheme (msModelSlim ``*_svd`` and nunchaku ``svdq_*``) against the reference
backend on fresh random inputs (M in {1, 16, 300}, bf16 / fp16, bias, odd rank, an all-zero branch), the Triton
low-rank branch kernel against its pure-torch twin, CUDA-graph capture and torch.compile; and, only where nunchaku
is installed and builds for the GPU (not SM90), nunchaku's own kernels (``cuda.svdq_nunchaku``) against the reference.

Tolerances per residual family and for the branch: tests/svd/_svd_cuda_cases.py (module docstring).  The same
checks run on the CPU in Triton's interpreter for the residuals the interpreter can run (int8, svdq):
tests/svd/test_svd_cuda_cpu.py.  Small shapes on purpose (N 160, K 256 / 512): the file should take well under a
minute on an H200.

Both branch forms get the same checks: the default split branch (``svd_branch="split"``: the hidden once per call,
then the up-projection onto the residual; ``test_split_*``, which also force K splits, a 16-bit residual, M 0 and
4096, and bit-identical repeats) and the opt-in fused one (``svd_branch="fused"``, the other tests).

Run: python -m pytest tests/svd/test_svd_gpu.py -m gpu -q
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():  # the conftest skips too; this keeps the imports below off CPU CI
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _svd_cuda_cases as C  # noqa: E402

from omni_npu_quant.backends import CudaBackend, ReferenceBackend  # noqa: E402
from omni_npu_quant.kernels.cuda.jit.svd_lowrank import lowrank_add, lowrank_add_split_from  # noqa: E402

DEV = "cuda"
MS = (1, 16, 300)
N = 160  # not a multiple of the branch kernel's 64-wide N tile
FUSED = {"svd_branch": "fused"}  # the opt-in one-kernel branch (the default is split: tests below)


def _k(name):
    return 512 if "dual" in name else 256


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", C.SVD_NAMES)
def test_cuda_svd_matches_reference(name, dtype, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    ref, cuda = ReferenceBackend(), CudaBackend(**FUSED)
    kinds = set()
    for rank, bias, zero, seed in ((7, True, False, 1), (16, False, False, 2), (5, True, True, 3)):
        fails, rk = C.check_layer(cuda, ref, name, dtype, MS, n=N, k=_k(name), rank=rank, bias=bias,
                                  zero_branch=zero, seed=seed, device=DEV)
        assert not fails, fails
        kinds.add(rk)
    # the residual runs on the GPU's own kernel for its scheme where one exists
    if name.startswith("w8a8_dynamic"):
        assert kinds <= {"cuda.int8_dynamic", "cuda.cutlass_w8a8"}, kinds
    elif name.startswith("w8a8_static"):
        assert kinds <= {"cuda.int8_static", "cuda.cutlass_w8a8_static"}, kinds
    elif name.startswith("svdq"):
        assert kinds == {"reference.svdq"}  # nunchaku's kernels are not on SM90 (kernels/cuda/svdq_nunchaku.py)
    elif torch.cuda.get_device_capability()[0] in (9, 10):
        assert kinds <= {"cuda.mx", "cuda.mx_fp8tc"}, kinds


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_branch_kernel_vs_twin(dtype):
    fails = []
    for i, (m, k, r, n) in enumerate(((1, 256, 7, 160), (16, 200, 16, 70), (300, 512, 33, 129), (300, 64, 1, 64))):
        fails += C.check_lowrank_add(lowrank_add, DEV, dtype, m, k, r, n, seed=i)
    assert not fails, fails


@pytest.mark.parametrize("name,m", [("mxfp4_svd", 1), ("w8a8_dynamic_svd", 16), ("svdq_int4", 300),
                                    ("mxfp4_dual_svd", 4)], ids=str)
def test_cuda_graph_capture(name, m, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    s, t = C.make_layer(name, N, _k(name), 7, bias=True, zero_branch=False, seed=5)
    be = CudaBackend(**FUSED)
    p = be.prepare(s, t, torch.bfloat16)
    assert p.kernel.name == "cuda.svd" and p.branch == "fused"
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
    assert torch.equal(out, again), name
    assert not torch.equal(out, eager)


def test_torch_compile_custom_op(monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    s, t = C.make_layer("w8a8_dynamic_svd", N, 256, 7, bias=True, zero_branch=False, seed=6)
    be = CudaBackend(**FUSED)
    p = be.prepare(s, t, torch.bfloat16)
    torch._dynamo.reset()

    def f(x):
        # relu, not "+ 1.0": cuda.svd returns fp32 and the backend rounds it to bf16; Inductor fuses that cast with
        # a following add and skips the intermediate rounding (emulate_precision_casts off), so "+ 1.0" differs
        # from eager by design (2026-12-02 H200); relu commutes with rounding
        return torch.relu(be.apply(p, x * 2.0))

    cf = torch.compile(f, fullgraph=True)
    for m in (16, 19):
        x = torch.randn(m, p.k, device=DEV, dtype=torch.bfloat16)
        assert torch.equal(cf(x), f(x))


def test_nunchaku_entry_vs_reference():
    """``cuda.svdq_nunchaku`` (nunchaku's own kernels) where nunchaku is installed and builds for this GPU (SM80 /
    SM86 / SM89 / SM120; not the H200): against the reference within nunchaku's rounding (16-bit group partials,
    the residual rounded before the branch is added), relative L2 <= 2e-2."""
    from omni_npu_quant.kernels.cuda.svdq_nunchaku import CudaSVDQNunchaku
    from omni_npu_quant.platform import detect_device

    ok, why = CudaSVDQNunchaku.is_supported(detect_device())
    if not ok:
        pytest.skip(f"cuda.svdq_nunchaku not usable here: {why}")
    fams = ("svdq_int4", "svdq_nvfp4") if detect_device().family == "sm120" else ("svdq_int4",)
    ref, be = ReferenceBackend(), CudaBackend(kernel="cuda.svdq_nunchaku")
    for name in fams:
        s, t = C.make_layer(name, 256, 256, 16, bias=True, zero_branch=False, seed=8)
        p = be.prepare(s, t, torch.bfloat16)
        assert p.kernel.name == "cuda.svdq_nunchaku"
        pr = ref.prepare(s, t, torch.bfloat16)
        for m in MS:
            x = torch.randn(m, 256, generator=torch.Generator().manual_seed(m)).bfloat16()
            y, yr = be.apply(p, x.to(DEV)).float().cpu(), ref.apply(pr, x).float()
            assert ((y - yr).norm() / yr.norm()).item() <= 2e-2, (name, m)


@pytest.mark.parametrize("precision", ["int4", "nvfp4"])
def test_nunchaku_format_checkpoint_on_cuda(tmp_path, precision, monkeypatch):
    """A nunchaku-format safetensors file (synthetic SVDQuant layer in nunchaku's packing) read by our reader and run
    by the CUDA backend (``cuda.svd`` on SM90) against the reference backend, tolerances as above."""
    from safetensors.torch import save_file

    import nunchaku_pack as NP
    from omni_npu_quant.checkpoint.nunchaku import load_nunchaku
    from omni_npu_quant.schemes.registry import get_scheme

    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    g = torch.Generator().manual_seed(9)
    w = torch.randn(256, 384, generator=g) * 0.05
    w[:, 3] *= 20
    nun, _ = NP.svdquant_layer(w, torch.randn(256, generator=g) * 0.1, torch.rand(384, generator=g) + 0.5, 32, precision)
    save_file({f"blk.fc.{k}": v.contiguous() for k, v in nun.items()}, str(tmp_path / "m.safetensors"))
    name, t = load_nunchaku(tmp_path).layers["blk.fc"]
    s = get_scheme(name)
    ref, cuda = ReferenceBackend(), CudaBackend()
    pr, pc = ref.prepare(s, t, torch.bfloat16), cuda.prepare(s, t, torch.bfloat16)
    for m in MS:
        x = (torch.randn(m, 384, generator=g) * 0.5).bfloat16()
        y_r = ref.apply(pr, x).float()
        y_c = cuda.apply(pc, x.to(DEV)).float().cpu()
        res_r = pr.residual.kernel.apply(pr.residual, x).float()
        res_c = pc.residual.kernel.apply(pc.residual, x.to(DEV)).float().cpu()
        rk = pc.residual.kernel.name if pc.kernel.name == "cuda.svd" else pc.kernel.name
        if pc.kernel.name == "cuda.svd":
            assert bool(((res_c - res_r).abs() <= C.residual_tol(rk, res_r, torch.bfloat16, t.get("bias"))).all()), \
                (m, rk)
            tol = (res_c - res_r).abs() + C.branch_tol(x, t["svd_lowrank_l1"], t["svd_lowrank_l2"], torch.bfloat16) \
                + C.ulp_rel(torch.bfloat16) * y_r.abs() + torch.finfo(torch.bfloat16).tiny
            assert bool(((y_c - y_r).abs() <= tol).all()), (m, float(((y_c - y_r).abs() / tol).max()))
        else:  # nunchaku's own kernels where installed: its rounding
            assert ((y_c - y_r).norm() / y_r.norm()).item() <= 2e-2, (m, rk)


# ---- the default split branch (svd_branch="split"): same checks as the fused one, plus determinism ------------------
SPLIT = {"svd_branch": "split"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", C.SVD_NAMES)
def test_split_cuda_svd_matches_reference(name, dtype, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    ref, cuda = ReferenceBackend(), CudaBackend(**SPLIT)
    for rank, bias, zero, seed in ((7, True, False, 1), (16, False, False, 2), (5, True, True, 3),
                                   (40, True, False, 4)):
        fails, _ = C.check_layer(cuda, ref, name, dtype, MS, n=N, k=_k(name), rank=rank, bias=bias,
                                 zero_branch=zero, seed=seed, device=DEV)
        assert not fails, fails
    s, t = C.make_layer(name, N, _k(name), 7, bias=True, zero_branch=False, seed=1)
    assert cuda.prepare(s, t, dtype).branch == "split"
    assert CudaBackend().prepare(s, t, dtype).branch == "split"  # the default


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_split_branch_kernels_vs_twin(dtype):
    fails = []
    shapes = ((1, 256, 7, 160), (16, 200, 16, 70), (300, 512, 33, 129), (300, 64, 1, 64), (0, 256, 7, 64),
              (17, 1000, 100, 96), (4096, 2048, 32, 640), (1, 8192, 32, 1024))
    for split in (None, 1, 4, 32):
        f = lambda x, a, b, r, s=split: lowrank_add_split_from(x, a, b, r, split=s)  # noqa: E731
        for i, (m, k, r, n) in enumerate(shapes):
            fails += C.check_lowrank_add(f, DEV, dtype, m, k, r, n, seed=i)
    if dtype != torch.float32:  # the residual in the activation dtype, read as it is
        for i, (m, k, r, n) in enumerate(shapes[:4]):
            fails += C.check_lowrank_add(lowrank_add_split_from, DEV, dtype, m, k, r, n, seed=20 + i, res_dtype=dtype)
    assert not fails, fails


def test_split_branch_is_deterministic():
    """Fixed summation order, no atomics: repeated calls are bit-identical (M 1 with 32 K slices, M 4096)."""
    from omni_npu_quant.kernels.cuda.jit.svd_lowrank import SplitPlan, lowrank_add_split

    g = torch.Generator(device=DEV).manual_seed(0)
    l1 = torch.randn(32, 8192, device=DEV, generator=g).bfloat16() * 0.05
    l2 = torch.randn(1024, 32, device=DEV, generator=g).bfloat16() * 0.05
    plan = SplitPlan(l1, l2)
    for m in (1, 4096):
        x = torch.randn(m, 8192, device=DEV, generator=g).bfloat16()
        res = torch.randn(m, 1024, device=DEV, generator=g)
        first = lowrank_add_split(x, res, plan)
        for _ in range(3):
            assert torch.equal(lowrank_add_split(x, res, plan), first), m


@pytest.mark.parametrize("name,m", [("mxfp4_svd", 1), ("w8a8_dynamic_svd", 16), ("svdq_int4", 300),
                                    ("mxfp4_dual_svd", 4)], ids=str)
def test_split_cuda_graph_capture(name, m, monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    s, t = C.make_layer(name, N, _k(name), 7, bias=True, zero_branch=False, seed=5)
    be = CudaBackend(**SPLIT)
    p = be.prepare(s, t, torch.bfloat16)
    assert p.kernel.name == "cuda.svd" and p.branch == "split"
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
    assert torch.equal(out, again), name
    assert not torch.equal(out, eager)


def test_split_torch_compile_custom_op(monkeypatch):
    monkeypatch.setenv("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")
    s, t = C.make_layer("w8a8_dynamic_svd", N, 256, 7, bias=True, zero_branch=False, seed=6)
    be = CudaBackend(**SPLIT)
    p = be.prepare(s, t, torch.bfloat16)
    assert p.branch == "split"
    torch._dynamo.reset()

    def f(x):
        return torch.relu(be.apply(p, x * 2.0))  # relu: see test_torch_compile_custom_op

    cf = torch.compile(f, fullgraph=True)
    for m in (16, 19):
        x = torch.randn(m, p.k, device=DEV, dtype=torch.bfloat16)
        assert torch.equal(cf(x), f(x))
