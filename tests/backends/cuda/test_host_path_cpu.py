"""Host path of the CUDA MX / int8 kernels per call (issue 14), on a CPU machine with the Triton launches
stubbed (``tools/host_probe.py --stub-cpu``'s stub: Triton's driver and compiler replaced, a launch is a
no-op): what runs per call, not what the kernels compute (the interpreter tests check that).

Pinned here: the decode-kernel decision of ``cuda.mx`` is made once at prepare (no environment read per
call: the mxfp8 regression of the 2026-12-02 H200 run, 139 us of host time at M=1), no import statement
runs per call, every launch of the decode / gemv paths goes through ``launch.FastKernel`` (no
``JITFunction.run`` after the first call), and apply runs the quantizer ``quantize_activation`` reports."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PRELUDE = textwrap.dedent("""
    import builtins, os, sys
    sys.path.insert(0, os.path.join({repo!r}, "tools"))
    import host_probe
    launch = host_probe.install_stub()
    import torch
    from triton.runtime.jit import JITFunction
    from omni_npu_quant import platform as P
    from omni_npu_quant.kernels.base import Target
    from omni_npu_quant.kernels.cuda import int8 as cint8, mx as cmx, mx_fp8tc as cfp8
    from omni_npu_quant.kernels.cuda.jit import decode, gemv, ops
    from omni_npu_quant.schemes.registry import get_scheme
    assert launch.set_enabled(True)
    DEV = P.DeviceInfo("cuda", "sm90", "sm90")
    g = torch.Generator().manual_seed(0)

    def layer(cls, name, n, k, **opts):
        kern = cls(Target(DEV, "cpu", opts))
        s = get_scheme(name)
        t = s.quantize_weight(torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g))
        return kern, kern.prepare(s, t, torch.bfloat16, n, k, name)

    class Counter:
        def __init__(self):
            self.n = {{}}
        def add(self, what):
            self.n[what] = self.n.get(what, 0) + 1

    def watch(fn, calls=3):
        '''Run fn() calls times with os.environ reads, import statements and JITFunction.run counted.'''
        c = Counter()
        env_cls, imp, run = type(os.environ), builtins.__import__, JITFunction.run
        get, getitem = env_cls.get, env_cls.__getitem__
        env_cls.get = lambda self, key, *d: (c.add(("env", key)), get(self, key, *d))[1]
        env_cls.__getitem__ = lambda self, key: (c.add(("env", key)), getitem(self, key))[1]
        builtins.__import__ = lambda name, *a, **kw: (c.add(("import", name)), imp(name, *a, **kw))[1]
        JITFunction.run = lambda self, *a, **kw: (c.add(("triton_run", self.__name__)), run(self, *a, **kw))[1]
        try:
            for _ in range(calls):
                fn()
        finally:
            env_cls.get, env_cls.__getitem__ = get, getitem
            builtins.__import__, JITFunction.run = imp, run
        return c.n
""")


def _run(body: str, **env) -> list[str]:
    e = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    e.pop("TRITON_INTERPRET", None)
    for k in ("OMNI_NPU_QUANT_CUDA_DECODE", "OMNI_NPU_QUANT_CUDA_GEMV"):
        e.pop(k, None)
    e.update(env)
    code = PRELUDE.format(repo=REPO) + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()


def test_decode_decision_is_read_once_at_prepare():
    out = _run("""
        launched = Counter()
        real = decode._DECODE
        decode._DECODE = lambda grid, args, opts: (launched.add("decode"), real(grid, args, opts))[1]
        x = torch.randn(1, 512, generator=g).to(torch.bfloat16)
        os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = "1"
        kern, p = layer(cmx.CudaMX, "mxfp8", 64, 512)
        assert p.decode is True
        os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = "0"  # after prepare: the layer keeps its decision
        kern.apply(p, x)
        seen = watch(lambda: kern.apply(p, x), calls=5)
        assert launched.n == {"decode": 6}, launched.n
        assert not seen, seen  # no env read, no import, no Triton launch path per call
        _, p0 = layer(cmx.CudaMX, "mxfp8", 64, 512)
        assert p0.decode is False  # prepared while the variable is 0
        launched.n.clear()
        kern.apply(p0, x)
        assert launched.n == {}, launched.n
        del os.environ["OMNI_NPU_QUANT_CUDA_DECODE"]
        assert layer(cmx.CudaMX, "mxfp8", 64, 512)[1].decode is False  # auto: small layer
        assert decode.policy("auto", False, 8192, 8192) and not decode.policy("auto", True, 8192, 8192)
        # the default selection's M <= 16 route (cuda.mx_fp8tc -> cuda.mx) carries the decision too
        os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = "1"
        kf, pf = layer(cfp8.CudaMXFp8TC, "mxfp8", 64, 512, fp8tc_gemm="auto", fp8tc_min_m=17)
        assert pf.decode is True and pf.min_m == 17
        launched.n.clear()
        kf.apply(pf, x)
        assert launched.n == {"decode": 1}, launched.n
        print("OK")
    """)
    assert out[-1] == "OK"


def test_apply_does_no_per_call_env_import_or_triton_launch():
    """Every scheme of the issue, default and gemv=1: after the first call, apply reads no environment
    variable, runs no import statement and never enters JITFunction.run (all launches are FastKernel's)."""
    out = _run("""
        cases = [(cint8.CudaInt8Dynamic, "w8a8_dynamic", 256), (cint8.CudaInt8Static, "w8a8_static", 256),
                 (cmx.CudaMX, "mxfp8", 512), (cmx.CudaMX, "mxfp4", 512), (cmx.CudaMX, "w4a8_mxfp", 512),
                 (cmx.CudaMX, "mxfp4_dual", 1024)]
        for cls, name, k in cases:
            for opts in ({}, {"gemv": 1}):
                for m in (1, 16, 17):
                    if cls is cint8.CudaInt8Static:
                        kern = cls(Target(DEV, "cpu", opts))
                        s = get_scheme(name)
                        t = s.quantize_weight(torch.randn(48, k, generator=g) * 0.05, torch.randn(48, generator=g),
                                              act_min=-4.0, act_max=5.0)
                        t.pop("weight_offset", None)
                        p = kern.prepare(s, t, torch.bfloat16, 48, k, name)
                    else:
                        kern, p = layer(cls, name, 48, k, **opts)
                    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
                    kern.apply(p, x)
                    seen = watch(lambda: kern.apply(p, x))
                    assert not seen, (name, opts, m, seen)
        print("OK")
    """)
    assert out[-1] == "OK"


def test_apply_runs_the_reported_quantizer():
    """The int8 / MX applies call the op quantize_activation calls (once per apply) and hand its outputs to
    the GEMM unchanged (the dict is no longer built per apply)."""
    out = _run("""
        x = torch.randn(3, 256, generator=g).to(torch.bfloat16)
        calls = []
        real_q, real_gemm, real_gemv = ops.int8_dynamic_quant, ops.int8_gemm, gemv.int8_gemv
        def q(x2, smooth):
            r = real_q(x2, smooth); calls.append(("quant", r)); return r
        ops.int8_dynamic_quant = q
        ops.int8_gemm = lambda qa, w, dt, **kw: (calls.append(("gemm", qa, kw["sx"])), real_gemm(qa, w, dt, **kw))[1]
        gemv.int8_gemv = lambda qa, w, dt, **kw: (calls.append(("gemm", qa, kw["sx"])), real_gemv(qa, w, dt, **kw))[1]
        for opts in ({}, {"gemv": 1}):
            kern, p = layer(cint8.CudaInt8Dynamic, "w8a8_dynamic", 48, 256, **opts)
            calls.clear()
            kern.apply(p, x)
            assert [c[0] for c in calls] == ["quant", "gemm"], calls
            (qt, st), (_, qa, sx) = calls[0][1], calls[1]
            assert qa is qt and sx is st
            calls.clear()
            d = kern.quantize_activation(p, x)
            assert set(d) == {"x_q", "x_scale"} and d["x_q"] is calls[0][1][0] and d["x_scale"] is calls[0][1][1]
        mxq, seen = ops.mx_quant, []
        ops.mx_quant = lambda *a, **kw: (seen.append(a[2:]), mxq(*a, **kw))[1]
        for name in ("mxfp8", "mxfp4", "w4a8_mxfp"):
            kern, p = layer(cmx.CudaMX, name, 48, 256)
            s = p.scheme
            seen.clear()
            kern.apply(p, x)
            kern.quantize_activation(p, x)
            want = (s.act_fmt, s.act_round_mode, s.act_scale_alg, p.kp)
            assert seen == [want, want], (name, seen)
        print("OK")
    """)
    assert out[-1] == "OK"


def test_stub_probe_runs():
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "host_probe.py"), "--stub-cpu", "--n", "256",
                        "--k", "512", "--calls", "20", "--rounds", "3"], capture_output=True, text=True,
                       env={k: v for k, v in dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="").items()
                            if k != "TRITON_INTERPRET"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln for ln in r.stdout.splitlines() if "median" in ln]
    assert [ln.split()[0] for ln in rows] == ["w8a8_dynamic", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"], r.stdout
