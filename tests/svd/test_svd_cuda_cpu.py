"""The checks of tests/svd/test_svd_gpu.py that Triton's interpreter can run on the CPU (TRITON_INTERPRET=1, in a
subprocess): ``cuda.svd`` with the int8 (``cuda.int8_dynamic`` / ``cuda.int8_static``) and nunchaku (``reference.svdq``)
residuals against the reference backend (M in {1, 16, 300}, bias, odd rank, zero branch), and the Triton branch
kernel against its twin (odd ranks, zero factors, M up to 300).  Same tolerances (tests/svd/_svd_cuda_cases.py).

Not here: MX residuals (their GEMM is ``tl.dot_scaled``, which the interpreter lacks: GPU only), bf16 (the
interpreter truncates fp32 -> bf16 casts: the branch's hidden rounding is a GPU check), CUDA graphs."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

SCRIPT = textwrap.dedent("""
    import logging, sys
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    logging.disable(logging.WARNING)
    sys.path.insert(0, {here!r})
    import _svd_cuda_cases as C
    from omni_npu_quant.backends import CudaBackend, ReferenceBackend
    from omni_npu_quant.kernels.cuda.jit.svd_lowrank import lowrank_add
    fails, kinds = [], {{}}
    for dt in (torch.float16, torch.float32):
        for i, (m, k, r, n) in enumerate(((1, 256, 7, 160), (16, 200, 16, 70), (300, 128, 33, 129), (5, 64, 1, 64))):
            fails += C.check_lowrank_add(lowrank_add, 'cpu', dt, m, k, r, n, seed=i)
    cuda, ref = CudaBackend(device='cpu', svd_branch='fused'), ReferenceBackend()
    for name in ('w8a8_dynamic_svd', 'w8a8_static_svd', 'svdq_int4', 'svdq_nvfp4'):
        for rank, bias, zero, seed in ((7, True, False, 1), (5, False, True, 3)):
            f, rk = C.check_layer(cuda, ref, name, torch.float16, (1, 16, 300), n=160, k=256, rank=rank, bias=bias,
                                  zero_branch=zero, seed=seed, device='cpu')
            fails += f
            kinds.setdefault(name, set()).add(rk)
    print('KINDS', sorted((k, sorted(v)) for k, v in kinds.items()))
    print('FAILS', fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_cuda_svd_in_triton_interpreter():
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(here=HERE)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]
    kinds = next(line for line in r.stdout.splitlines() if line.startswith("KINDS"))
    assert "('w8a8_dynamic_svd', ['cuda.int8_dynamic'])" in kinds and "('w8a8_static_svd', ['cuda.int8_static'])" in kinds
    assert "('svdq_int4', ['reference.svdq'])" in kinds and "('svdq_nvfp4', ['reference.svdq'])" in kinds


SPLIT_SCRIPT = textwrap.dedent("""
    import logging, os, sys
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    logging.disable(logging.WARNING)
    sys.path.insert(0, {here!r})
    import _svd_cuda_cases as C
    from omni_npu_quant.backends import CudaBackend, ReferenceBackend
    from omni_npu_quant.kernels.cuda.jit.svd_lowrank import lowrank_add_split_from
    fails, splits = [], set()
    shapes = ((1, 256, 7, 160), (16, 200, 16, 70), (300, 128, 33, 129), (5, 64, 1, 64), (0, 64, 7, 64),
              (17, 520, 100, 96))  # rank 100: two rank tiles of 64
    for dt in (torch.float16, torch.float32):
        for split in (None, 1, 4, 32):  # None: the plan's own choice; forced: the partial sums in step 2
            f = lambda x, a, b, r, s=split: lowrank_add_split_from(x, a, b, r, split=s)
            for i, (m, k, r, n) in enumerate(shapes):
                fails += C.check_lowrank_add(f, 'cpu', dt, m, k, r, n, seed=i)
        # a residual in the activation dtype (read as it is, added in fp32)
        for i, (m, k, r, n) in enumerate(shapes[:3]):
            fails += C.check_lowrank_add(lowrank_add_split_from, 'cpu', dt, m, k, r, n, seed=10 + i, res_dtype=dt)
    cuda, ref = CudaBackend(device='cpu', svd_branch='split'), ReferenceBackend()
    for name in ('w8a8_dynamic_svd', 'w8a8_static_svd', 'svdq_int4'):
        for rank, bias, zero, seed in ((7, True, False, 1), (5, False, True, 3)):
            f, rk = C.check_layer(cuda, ref, name, torch.float16, (1, 16, 300), n=160, k=256, rank=rank, bias=bias,
                                  zero_branch=zero, seed=seed, device='cpu')
            fails += f
    s, t = C.make_layer('w8a8_dynamic_svd', 160, 256, 7, bias=True, zero_branch=False, seed=4)
    p = cuda.prepare(s, t, torch.float16)
    print('BRANCH', p.kernel_name, p.branch, type(p.plan).__name__, p.kernel.mode(s)[1])
    print('DEFAULT', CudaBackend(device='cpu').prepare(s, t, torch.float16).branch)
    os.environ['OMNI_NPU_QUANT_SVD_BRANCH'] = 'fused'
    print('ENV', CudaBackend(device='cpu').prepare(s, t, torch.float16).branch,
          CudaBackend(device='cpu', svd_branch='split').prepare(s, t, torch.float16).branch)
    os.environ['OMNI_NPU_QUANT_SVD_BRANCH'] = 'splt'
    try:
        CudaBackend(device='cpu').prepare(s, t, torch.float16)
        print('BAD accepted')
    except ValueError as e:
        print('BAD', e)
    print('FAILS', fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_split_branch_in_triton_interpreter():
    """The default split branch (``svd_branch="split"``: hidden once per call, then up-projection onto the residual)
    against the twin: fp16 / fp32, ranks 1, 7, 16, 33, 100, M 0 / 1 / 5 / 16 / 17 / 300, the plan's split and forced
    splits 1 / 4 / 32, zero factors, a 16-bit residual; ``cuda.svd`` with it vs the reference backend (int8 and
    svdq residuals); the option, the environment variable and a bad value."""
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("OMNI_NPU_QUANT_SVD_BRANCH", None)
    r = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT.format(here=HERE)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "FAILS []" in out, out[-3000:]
    assert "BRANCH cuda.svd split SplitPlan" in out and "svd_branch=split" in out, out[-3000:]
    assert "DEFAULT split" in out and "ENV fused split" in out, out[-3000:]
    assert "BAD backend option svd_branch / OMNI_NPU_QUANT_SVD_BRANCH must be one of fused, split, got 'splt'" in out, \
        out[-3000:]


def test_split_plan_choices():
    """The split plan (no Triton launch): K slices sized to fill the SMs, capped, powers of two; bad inputs named."""
    pytest.importorskip("triton")
    import torch

    from omni_npu_quant.kernels.cuda.jit.svd_lowrank import MAX_SPLIT, MAX_SPLIT_LARGE_M, SplitPlan

    bf = torch.bfloat16
    p = SplitPlan(torch.zeros(32, 8192, dtype=bf), torch.zeros(8192, 32, dtype=bf), sms=132)
    g1, k_per, bm1, split, g2, bm2, bn, _, _ = p.config(1)
    assert split == MAX_SPLIT and g1 == (1, 1, MAX_SPLIT) and k_per * split >= 8192 and g2 == (1, 8192 // 64)
    assert p.config(300)[3] == MAX_SPLIT_LARGE_M
    assert p.config(4096)[3] == 4 and p.config(16384)[3] == 1  # 64 / 256 M tiles of 64 rows
    assert SplitPlan(torch.zeros(32, 64, dtype=bf), torch.zeros(64, 32, dtype=bf)).config(1)[3] == 1  # one K chunk
    assert SplitPlan(torch.zeros(100, 256, dtype=bf), torch.zeros(64, 100, dtype=bf)).r_tiles == 2
    for split in (None, 1, 2, 4, 8, 16, 32):
        _, k_per, _, s, _, _, _, _, _ = p.config(5, split)
        assert s & (s - 1) == 0 and k_per % 64 == 0 and k_per * s >= 8192 and k_per * (s - 1) < 8192
    with pytest.raises(ValueError, match="power of two"):
        p.config(5, 3)
    with pytest.raises(ValueError, match="fc.*do not fit"):
        SplitPlan(torch.zeros(32, 64, dtype=bf), torch.zeros(64, 16, dtype=bf), where="fc")
    with pytest.raises(ValueError, match="share one float dtype"):
        SplitPlan(torch.zeros(32, 64, dtype=bf), torch.zeros(64, 32, dtype=torch.float16))


def test_tolerances_can_fail():
    """The checks flag a wrong kernel: a branch kernel that drops the branch or one rank, a residual off by more than 1 ulp."""
    import torch

    sys.path.insert(0, HERE)
    import _svd_cuda_cases as C
    from omni_npu_quant.schemes.svd_base import lowrank_branch

    def no_branch(x, l1, l2, res):
        return res.clone()

    def drops_last_rank(x, l1, l2, res):  # e.g. a BLOCK_R mask off by one
        return res + lowrank_branch(x, l1[:-1], l2[:, :-1], x.dtype)

    assert C.check_lowrank_add(no_branch, "cpu", torch.float16, 16, 256, 7, 64, seed=0)
    assert C.check_lowrank_add(drops_last_rank, "cpu", torch.bfloat16, 300, 256, 16, 64, seed=0)

    def twin(x, l1, l2, res):
        return res + lowrank_branch(x, l1, l2, x.dtype)

    assert not C.check_lowrank_add(twin, "cpu", torch.bfloat16, 300, 256, 16, 64, seed=0)
    r = torch.randn(8, 16) * 10
    assert not bool(((r * (1 + 2.0 ** -5) - r).abs() <= C.residual_tol("cuda.int8_dynamic", r, torch.bfloat16)).all())


def test_every_cuda_prepare_registers_the_compile_handle():
    """Every CUDA kernel's prepare, its own or inherited (``cuda.svd`` takes ``SVDKernel.prepare``), registers the
    prepared layer for the ``torch.compile`` custom op (2026-12-02 H200: ``cuda.svd`` had no ``_op_handle``)."""
    from omni_npu_quant.kernels.registry import kernel_classes

    cuda = [c for c in kernel_classes() if c.device_kind == "cuda"]
    assert any(c.name == "cuda.svd" for c in cuda)
    for c in cuda:
        assert getattr(c.prepare, "_registers_handle", False), c.name


COMPILE_SCRIPT = textwrap.dedent("""
    import logging, sys
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    logging.disable(logging.WARNING)
    sys.path.insert(0, {here!r})
    import _svd_cuda_cases as C
    from omni_npu_quant.backends import CudaBackend
    s, t = C.make_layer('w8a8_dynamic_svd', 160, 256, 7, bias=True, zero_branch=False, seed=6)
    be = CudaBackend(device='cpu', **{opts!r})
    p = be.prepare(s, t, torch.float16)
    assert p.kernel_name == 'cuda.svd', p.kernel_name
    assert p.branch == {opts!r}.get('svd_branch', 'split'), p.branch
    f = lambda x: be.apply(p, x)
    cf = torch.compile(f, fullgraph=True)
    for m in (16, 19):
        x = torch.randn(m, p.k, dtype=torch.float16)
        print('SAME', m, torch.equal(cf(x), f(x)))
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
@pytest.mark.parametrize("opts", [{}, {"svd_branch": "fused"}], ids=["split", "fused"])
def test_cuda_svd_under_torch_compile_in_interpreter(opts):
    """``cuda.svd`` through the custom op under ``torch.compile`` equals eager bit for bit: its fake must say fp32 (the
    branch kernel's output), not the activation dtype (before: the compiled graph misread the fp32 output); both
    branch forms (the split one writes fp32 too)."""
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("OMNI_NPU_QUANT_SVD_BRANCH", None)
    r = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT.format(here=HERE, opts=opts)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("SAME") == 2 and "False" not in r.stdout, r.stdout[-2000:]
