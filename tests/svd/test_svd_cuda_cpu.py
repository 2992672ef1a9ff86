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
    cuda, ref = CudaBackend(device='cpu'), ReferenceBackend()
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
    be = CudaBackend(device='cpu')
    p = be.prepare(s, t, torch.float16)
    assert p.kernel_name == 'cuda.svd', p.kernel_name
    f = lambda x: be.apply(p, x)
    cf = torch.compile(f, fullgraph=True)
    for m in (16, 19):
        x = torch.randn(m, p.k, dtype=torch.float16)
        print('SAME', m, torch.equal(cf(x), f(x)))
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_cuda_svd_under_torch_compile_in_interpreter():
    """``cuda.svd`` through the custom op under ``torch.compile`` equals eager bit for bit: its fake must say fp32 (the
    branch kernel's output), not the activation dtype (before: the compiled graph misread the fp32 output)."""
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT.format(here=HERE)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("SAME") == 2 and "False" not in r.stdout, r.stdout[-2000:]
