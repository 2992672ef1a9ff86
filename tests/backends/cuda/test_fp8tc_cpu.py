"""cuda.mx_fp8tc on a CPU machine: the rowwise E4M3 rescale twin (exactness window, scales, NaN/zero
rows), the kernel's refusals, and its Triton quantizer / FP8 GEMM in Triton's interpreter against the
pure-torch twins (subprocess, TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omni_npu_quant.kernels.cuda.jit import twins
from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.numerics.constants import E2M1, E4M3

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _stored(w, fmt, kp):
    q, c, _ = twins.twin_mx_quant(w, None, fmt, "rint", 0, kp)
    return q, c


def _decoded(q, c, fmt, kp):
    return twins._decode(q, c, fmt, kp).double()


@pytest.mark.parametrize("fmt", [E2M1, E4M3], ids=["e2m1", "e4m3"])
def test_rowwise_rescale_reconstructs_exact_rows(fmt):
    g = torch.Generator().manual_seed(1)
    n, kp = 12, 512
    w = torch.randn(n, kp, generator=g)
    w[1] *= 2.0 ** torch.arange(16).repeat_interleave(32).float()  # 16 blocks over 15 binades: outside the window
    w[2] = 0.0  # all-zero row
    w[3, :32] = 0.0  # one zero block
    q, c = _stored(w, fmt, kp)
    c[4, 3] = 255  # NaN block scale
    wr, sw, exact = twins.rowwise_weight(q, c, kp, fmt)
    assert wr.dtype == torch.uint8 and wr.shape == (n, kp) and sw.dtype == torch.float32
    ref = _decoded(q, c, fmt, kp)
    got = wr.view(torch.float8_e4m3fn).double() * sw.double()[:, None]
    assert torch.isnan(sw[4]) and not exact[4]
    assert sw[2] == 1.0 and exact[2] and (got[2] == 0).all()
    for r in range(n):
        if exact[r]:
            assert torch.equal(got[r], ref[r]), r
        elif r != 4:  # lost bits: below 2**-9 of the row's largest block scale
            big = 2.0 ** (c[r].to(torch.int32) - 127).max().item()
            assert (got[r] - ref[r]).abs().max().item() <= 2.0 ** -9 * big, r
    if fmt is E2M1:  # E2M1: exact whenever the non-zero blocks span <= 14 binades
        assert exact[[0, 2, 3]].all() and not exact[1]


def test_rowwise_e2m1_window_is_14_binades():
    kp = 64
    for span in range(0, 17):
        w = torch.ones(1, kp) * 0.5  # block 0: max 6 (scale 2**0) and the smallest E2M1 magnitude 0.5
        w[0, 0] = 6.0
        w[0, 32:] = 6.0 * 2.0 ** span  # block 1: scale 2**span
        q, c = _stored(w, E2M1, kp)
        wr, sw, exact = twins.rowwise_weight(q, c, kp, E2M1)
        assert bool(exact[0]) == (span <= 14), span


def test_activation_twin_matches_mx_twin_bytes():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 300, generator=g) * 5
    for fmt in (E2M1, E4M3):
        q, c, xr, sx = twins.twin_mx_quant_rowwise(x, None, fmt, "rint", 0, 512)
        q2, c2, _ = twins.twin_mx_quant(x, None, fmt, "rint", 0, 512)
        assert torch.equal(q, q2) and torch.equal(c, c2)
        y = twins.twin_fp8_rowwise_gemm(xr, sx, xr, sx, torch.float32)
        vals = twins._decode(q, c, fmt, 512).double()
        ref = (vals @ vals.t()).float()
        assert ((y - ref).abs() <= 1e-3 * ref.abs().amax()).all()


def test_refusals():
    from omni_npu_quant import platform as P
    from omni_npu_quant.kernels.base import Target
    from omni_npu_quant.kernels.cuda.mx_fp8tc import CudaMXFp8TC
    from omni_npu_quant.schemes.registry import get_scheme

    for fam, word in (("sm100", "native MX"), ("sm89", "SM90 only"), ("sm120", "SM90 only")):
        ok, why = CudaMXFp8TC.is_supported(P.DeviceInfo("cuda", fam, fam))
        assert not ok and word in why, (fam, why)
    kern = CudaMXFp8TC(Target(P.DeviceInfo("cuda", "sm90", "sm90"), "cpu"))
    ok, why = kern.can_implement(get_scheme("mxfp4_dual"), 256, 1024, torch.bfloat16)
    assert not ok and "dual" in why
    assert kern.can_implement(get_scheme("mxfp4"), 256, 1024, torch.bfloat16)[0]
    for n, dt, word in ((333, torch.bfloat16, "multiple of 16"), (256, torch.float16, "Triton FP8 GEMM")):
        ok, why = kern.can_implement(get_scheme("mxfp4"), n, 1024, dt)  # default fp8tc_gemm="scaled_mm"
        assert not ok and word in why, why
    auto = CudaMXFp8TC(Target(P.DeviceInfo("cuda", "sm90", "sm90"), "cpu", {"fp8tc_gemm": "auto"}))
    assert auto.can_implement(get_scheme("mxfp4"), 333, 1024, torch.float16)[0]
    off = CudaMXFp8TC(Target(P.DeviceInfo("cuda", "sm90", "sm90"), "cpu", {"mx_fp8tc": "off"}))
    ok, why = off.can_implement(get_scheme("mxfp8"), 256, 1024, torch.bfloat16)
    assert not ok and "disabled" in why


INTERP = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import sys, torch
    sys.path.insert(0, {here!r})
    from _cuda_cases import edge_rows, same_bits
    from omni_npu_quant.kernels.cuda.jit import fp8tc, twins
    from omni_npu_quant.numerics.constants import E4M3, E2M1
    fails = []
    for dt in (torch.float32, torch.float16):
        for k in ((333, 512, 1000) if dt == torch.float32 else (333, 512)):  # 1000: Kp 1024, 32-block chunks
            x = edge_rows(k, dt, seed=k)
            kp = -(-k // 256) * 256
            sm = torch.rand(k) + 0.5
            for fmt, rm, alg in [(E4M3, 'rint', 0), (E4M3, 'rint', 1), (E2M1, 'rint', 0), (E2M1, 'floor', 2),
                                 (E2M1, 'round', 1)]:
                for smooth in (None, sm if dt == torch.float32 else None):
                    a = fp8tc.mx_quant_rowwise(x, smooth, fmt, rm, alg, kp)
                    b = twins.twin_mx_quant_rowwise(x, smooth, fmt, rm, alg, kp)
                    if not (all(torch.equal(u, v) for u, v in zip(a[:3], b[:3])) and same_bits(a[3], b[3])):
                        fails.append(('quant', dt, k, fmt.name, rm, alg, smooth is None))
    g = torch.Generator().manual_seed(0)
    for m, n in ((5, 24), (17, 40)):
        kp = 256
        xr = torch.randn(m, kp, generator=g).mul(30).to(torch.float8_e4m3fn).view(torch.uint8)
        wr = torch.randn(n, kp, generator=g).mul(30).to(torch.float8_e4m3fn).view(torch.uint8)
        sx, sw, b = torch.rand(m, generator=g), torch.rand(n, generator=g), torch.randn(n, generator=g)
        for bias in (None, b):
            o = fp8tc.fp8_rowwise_gemm(xr, sx, wr, sw, n, kp, torch.float32, bias=bias)
            r = twins.twin_fp8_rowwise_gemm(xr, sx, wr, sw, torch.float32, bias=bias)
            if (o - r).abs().max().item() > 1e-5 * r.abs().max().item():
                fails.append(('gemm', m, n, bias is None))
    print('FAILS', fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_fp8tc_kernels_in_triton_interpreter():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", INTERP.format(here=here)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]
