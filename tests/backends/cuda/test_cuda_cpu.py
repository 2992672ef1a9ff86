"""CUDA backend checks that run on a CPU machine: the package imports without a GPU (and without
Triton), capability answers, and the Triton quantizer / int8 GEMM / weight-decode kernels run in
Triton's interpreter (TRITON_INTERPRET=1) against their pure-torch twins.

Interpreter limits (Triton 3.6): no ``tl.dot_scaled`` (MX GEMMs are GPU-only tests) and fp32 ->
bf16 casts truncate instead of rounding to nearest even, so bf16-rounding paths (bf16 outputs,
bf16 mul_scale / dual-level rounding, bf16 subnormals) are checked on the GPU only.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_import_without_triton_or_gpu():
    code = textwrap.dedent("""
        import sys
        sys.modules['triton'] = None  # any 'import triton' raises ImportError
        import torch
        from omni_npu_quant.backends import CudaBackend
        from omni_npu_quant.schemes.registry import get_scheme
        be = CudaBackend(device='cuda')
        cap = be.capability(get_scheme('mxfp4'))
        print(cap.mode)
    """)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "unsupported"


def test_capability_without_cuda():
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.schemes.registry import get_scheme

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; test_cuda_gpu covers it")
    cap = CudaBackend().capability(get_scheme("w8a8_dynamic"))
    assert cap.mode == "unsupported" and "CUDA" in cap.reason
    from omni_npu_quant.kernels import KernelPrepareError

    with pytest.raises(KernelPrepareError, match="backend 'cuda' cannot run"):
        CudaBackend().prepare(get_scheme("w8a8_dynamic"), {}, torch.bfloat16, where="layer0")


INTERP_SCRIPT = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import sys, torch
    sys.path.insert(0, {here!r})
    from _cuda_cases import edge_rows, same_bits
    from omni_npu_quant.kernels.cuda.jit import ops, twins
    from omni_npu_quant.numerics.constants import E4M3, E2M1
    fails = []
    def check(ok, what):
        if not ok:
            fails.append(what)
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float16, torch.float32):
        for k in (333, 64):
            x = edge_rows(k, dt, seed=k)
            sm = torch.rand(k, generator=g) + 0.5
            q, s = ops.int8_dynamic_quant(x, sm); q2, s2 = twins.twin_int8_dynamic_quant(x, sm)
            check(torch.equal(q, q2) and same_bits(s, s2), ('int8_dyn', dt, k))
            sc, off = torch.tensor([25.0], dtype=dt), torch.tensor([-3.0], dtype=dt)
            check(torch.equal(ops.int8_static_quant(x * 3, sm, sc, off), twins.twin_int8_static_quant(x * 3, sm, sc, off)),
                  ('int8_static', dt, k))
            kp = -(-k // 256) * 256
            for fmt, rm, alg in [(E4M3, 'rint', 0), (E4M3, 'rint', 1), (E2M1, 'rint', 0), (E2M1, 'round', 2),
                                 (E2M1, 'floor', 0), (E2M1, 'round', 1)]:
                for smooth in (None, sm if dt == torch.float32 else None):
                    q, c, _ = ops.mx_quant(x, smooth, fmt, rm, alg, kp)
                    q2, c2, _ = twins.twin_mx_quant(x, smooth, fmt, rm, alg, kp)
                    check(torch.equal(q, q2) and torch.equal(c, c2), ('mx', dt, k, fmt.name, rm, alg, smooth is None))
        x = edge_rows(1024, dt, seed=3)
        for rm in ('rint', 'round'):
            a, b = ops.dual_quant(x, None, rm), twins.twin_dual_quant(x, None, rm)
            check(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and same_bits(a[2], b[2]), ('dual', dt, rm))
    for m in (1, 17):
        n, k = 40, 200
        q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        sx, ws, b = torch.rand(m, generator=g), torch.rand(n, 1, generator=g), torch.randn(n, generator=g)
        for od in (torch.float32, torch.float16):
            check(torch.equal(ops.int8_gemm(q, w, od, sx=sx, ws=ws, bias=b), twins.twin_int8_gemm(q, w, od, sx=sx, ws=ws, bias=b)),
                  ('int8_gemm', m, od))
            qb, deq = torch.randint(-900, 900, (n,), generator=g, dtype=torch.int32), torch.rand(n, generator=g) * 1e-3
            check(torch.equal(ops.int8_gemm(q, w, od, quant_bias=qb, deq=deq, static=True),
                              twins.twin_int8_gemm(q, w, od, quant_bias=qb, deq=deq, static=True)), ('int8_static_gemm', m, od))
    for fmt in (E4M3, E2M1):
        wq, wsc, _ = twins.twin_mx_quant(torch.randn(8, 256, generator=g), None, fmt, 'rint', 0, 256)
        check(torch.equal(ops.mx_weight_dequant(wq, wsc, 256, fmt), twins.twin_mx_weight_dequant(wq, wsc, 256, fmt)),
              ('wdeq', fmt.name))
    print('FAILS', fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_kernels_in_triton_interpreter():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", INTERP_SCRIPT.format(here=here)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]


SUBNORMAL_FLOOR_SCRIPT = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    from omni_npu_quant.kernels.cuda.jit import ops, twins
    from omni_npu_quant.numerics.constants import E4M3, E2M1
    x = torch.zeros(4, 64)
    x[:, 0] = 16.0
    sub = [-2.0**-149, -2.0**-140, -3 * 2.0**-149, 2.0**-149, -2.0**-127, -1e-39, -2.0**-130, -2.0**-126]
    x[0, 1:1 + len(sub)] = torch.tensor(sub)
    for r, big in ((1, 2.0**-100), (2, 2.0**-120), (3, 1e-39)):  # block exponents below zero, subnormal max
        x[r, 32] = big
        x[r, 33:33 + len(sub)] = torch.tensor(sub)
    bad = []
    for fmt, modes in ((E2M1, ('floor', 'rint', 'round')), (E4M3, ('rint',))):
        for rm in modes:
            for alg in ((0, 1, 2) if fmt is E2M1 else (0, 1)):
                a, b = ops.mx_quant(x, None, fmt, rm, alg, 256), twins.twin_mx_quant(x, None, fmt, rm, alg, 256)
                if not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])):
                    bad.append((fmt.name, rm, alg, (a[0] != b[0]).nonzero()[:4].tolist()))
    print('BAD', bad)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_mx_quant_subnormal_underflow_in_interpreter():
    """fp32 subnormal activations beside a large value in the same block: ``x * 2**-e`` underflows to a signed zero in
    fp32 (the reference), so "floor" gives -0, not -0.5 (before: the kernel's exact subnormal path clamped its scale
    at 2**-126 and kept a nonzero value; found 2026-12-02 while reviewing the fp8tc quantizer)."""
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", SUBNORMAL_FLOOR_SCRIPT], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BAD []" in r.stdout, r.stdout[-2000:]
