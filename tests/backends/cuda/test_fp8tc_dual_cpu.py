"""cuda.mx_fp8tc_dual (dual-scale MXFP4 on FP8 tensor cores, opt-in) on a CPU machine: the per-(row, 512-chunk)
E4M3 rescale twin (exact chunks reconstruct the dual-scale values bit for bit), the kernel's refusals and its
M <= 16 route to cuda.mx, and its Triton kernels in Triton's interpreter (subprocess, TRITON_INTERPRET=1): the
chunk rescale's bytes and scales identical to the twin (bf16 / fp16 / fp32, ties, saturation, subnormals, zero
blocks and chunks, NaN / Inf rows, smoothing), the chunk-scaled FP8 GEMM against its twin (odd M, N not a multiple
of the tile, K 512 / 1536, a zero chunk, a NaN scale), the kernel against the reference backend within E2 and the
bytes quantize_activation reports identical to the reference.  Each check is also run against a deliberately
broken twin or kernel, which must fail it.

Triton 3.6's interpreter rounds fp32 -> bf16 by truncation and mishandles bf16 subnormals (numpy has no bf16);
the scripts below model both conversions through torch (RNE, as the GPU's cvt.rn.bf16.f32), as
``jit/interpret.py`` does for float8e4nv.  Without that the bf16 bytes of cuda.mx's own dual quantizer differ from
the reference in the interpreter (test_cuda_cpu.py runs it at fp16 / fp32 only).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.numerics.constants import E2M1
from omni_npu_quant.numerics.e8m0 import code_to_exponent
from omni_npu_quant.schemes.registry import get_scheme

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed in this environment")
ENV = "OMNI_NPU_QUANT_CUDA_MX_FP8TC_DUAL"


def _sm90():
    from omni_npu_quant import platform as P

    return P.DeviceInfo("cuda", "sm90", "sm90")


def _kernel(options=None):
    from omni_npu_quant.kernels.base import Target
    from omni_npu_quant.kernels.cuda.mx_fp8tc_dual import CudaMXFp8TCDual

    return CudaMXFp8TCDual(Target(_sm90(), "cpu", dict(options or {})))


def _dual_weight(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[1] = 0.0  # an all-zero row
    w[2, :512] = 0.0  # an all-zero chunk
    w[3, 32:64] = 0.0  # an all-zero block inside a chunk
    w[4, :512] *= 2.0 ** ((torch.arange(512) // 32) * 4 // 3 - 20).float()  # blocks over 20 binades: inexact
    return get_scheme("mxfp4_dual").quantize_weight(w, torch.randn(n, generator=g))


# ---------------------------------------------------------------------------------------------
# pure torch: the chunk rescale twin
# ---------------------------------------------------------------------------------------------
@needs_triton
def test_chunk_rescale_twin_reconstructs_exact_chunks():
    from omni_npu_quant.kernels.cuda.jit import fp8tc_dual as D

    n, k = 8, 1536
    t = _dual_weight(n, k, 1)
    s = get_scheme("mxfp4_dual")
    l0 = s.weight_l0(t)
    wr, sw, exact = D.twin_chunk_rescale(t["weight"], t["weight_scale"], l0)
    assert wr.shape == (n, k) and wr.dtype == torch.uint8 and sw.shape == (n, 3) and sw.dtype == torch.float32
    vals = MX.mx_decode(t["weight"], E2M1, k).double()
    l1 = MX.mx_dequantize(vals, code_to_exponent(t["weight_scale"]).to(torch.int32)).double()
    got = (wr.view(torch.float8_e4m3fn).double().reshape(n, 3, 512) * sw.double()[..., None]).reshape(n, k)
    ref = (l1.reshape(n, 3, 512) * l0.double()[..., None]).reshape(n, k)
    assert not exact[4, 0] and exact[[0, 1, 2, 3]].all() and exact[4, 1:].all()
    for r in range(n):
        for c in range(3):
            sl = slice(c * 512, (c + 1) * 512)
            if exact[r, c]:
                assert torch.equal(got[r, sl], ref[r, sl]), (r, c)
            else:  # lost bits: below 2**-9 of the chunk's largest block scale (times l0)
                big = 2.0 ** (t["weight_scale"][r, c * 16:(c + 1) * 16].to(torch.int32) - 127).max().item()
                err = (got[r, sl] - ref[r, sl]).abs().max().item()
                assert 0 < err <= 2.0 ** -9 * big * l0[r, c].item(), (r, c, err)
    assert sw[1].eq(0).all() and sw[2, 0] == 0  # zero chunks: l0 = 0
    # a broken twin (level 0 not folded in) fails this reconstruction check
    bad = (wr.view(torch.float8_e4m3fn).double().reshape(n, 3, 512) * (sw / l0.clamp(min=1e-30)).double()[..., None])
    assert not torch.equal(bad.reshape(n, k)[0], ref[0])


# ---------------------------------------------------------------------------------------------
# refusals, options, routing (no interpreter)
# ---------------------------------------------------------------------------------------------
def test_refusals_and_opt_in(monkeypatch):
    from omni_npu_quant import platform as P
    from omni_npu_quant.kernels import registry
    from omni_npu_quant.kernels.base import NATIVE
    from omni_npu_quant.kernels.cuda.common import CUDA_DOC
    from omni_npu_quant.kernels.cuda.mx_fp8tc_dual import VERIFIED_SM90, CudaMXFp8TCDual

    dual, single = get_scheme("mxfp4_dual"), get_scheme("mxfp4")
    monkeypatch.delenv(ENV, raising=False)
    off = _kernel()
    ok, why = off.can_implement(dual, 256, 1024, torch.bfloat16)  # off by default; the reason names both switches
    assert not ok and "mx_fp8tc_dual='on'" in why and f"{ENV}=1" in why, why
    on = _kernel({"mx_fp8tc_dual": "on"})
    assert on.can_implement(dual, 256, 1024, torch.bfloat16) == (True, "")
    assert on.can_implement(dual, 333, 1024, torch.float16)[0]
    ok, why = on.can_implement(dual, 256, 1024, torch.float32)
    assert not ok and "float32" in why
    ok, why = on.can_implement(single, 256, 1024, torch.bfloat16)
    assert not ok and "mxfp4_dual" in why and "mxfp4" in why
    ok, why = on.can_implement(dual, 256, 1000, torch.bfloat16)  # the scheme's K rule
    assert not ok
    monkeypatch.setenv(ENV, "1")
    assert _kernel().can_implement(dual, 256, 1024, torch.bfloat16)[0]  # env, read when the kernel is made
    assert not _kernel({"mx_fp8tc_dual": "off"}).can_implement(dual, 256, 1024, torch.bfloat16)[0]  # option wins
    monkeypatch.delenv(ENV)
    assert not off.enabled and not _kernel().enabled
    monkeypatch.setenv(ENV, "1")
    assert not off.enabled  # made before the env was set
    for fam, word in (("sm100", "native MX"), ("sm89", "SM90 only"), ("sm120", "SM90 only")):
        ok, why = CudaMXFp8TCDual.is_supported(P.DeviceInfo("cuda", fam, fam))
        assert not ok and word in why, (fam, why)
    names = [c.name for c in registry.candidate_classes("cuda")]
    assert names.index("cuda.mx_fp8tc") < names.index("cuda.mx_fp8tc_dual") < names.index("cuda.mx")
    assert on.verified_for(_sm90()) == VERIFIED_SM90 and "H200" in VERIFIED_SM90 and "2026-12-02" in VERIFIED_SM90
    assert on.verified_for(P.DeviceInfo("cuda", "sm100", "sm100")) == CUDA_DOC  # nothing claimed off SM90
    assert on.mode(dual) == (NATIVE, on.summary) and "slower than bf16" in on.summary
    assert on.output_dtype(type("P", (), {"act_dtype": torch.float16})()) == torch.float16  # the torch.compile fake


@needs_triton
def test_prepare_and_small_m_route(monkeypatch):
    """Prepare (weight rescale, notes) in the main process; M <= 16 goes to cuda.mx's _apply, M >= 17 to the FP8
    chunk path (its launchers stubbed here: the interpreter tests below run them)."""
    from omni_npu_quant.kernels.cuda import common
    from omni_npu_quant.kernels.cuda.jit import fp8tc_dual as D
    from omni_npu_quant.kernels.cuda.mx import CudaMX

    s = get_scheme("mxfp4_dual")
    n, k = 24, 1024
    t = _dual_weight(n, k, 2)
    kern = _kernel({"mx_fp8tc_dual": "on"})
    p = kern.prepare(s, t, torch.bfloat16, n, k, "layer")
    assert p.kernel is kern and p.wr.shape == (n, k) and p.sw.shape == (n, 2) and p.min_m == 17
    assert getattr(p, "_op_handle", None) is not None  # registered for the torch.compile custom op
    assert p.exact_chunks == 2 * n - 1 and any("1 of 48 weight (row, 512-chunk)" in note for note in p.notes), p.notes
    wr, sw, _ = D.twin_chunk_rescale(p.weight, p.weight_scale, p.l0w)
    assert torch.equal(p.wr, wr) and torch.equal(p.sw, sw)
    calls = []
    monkeypatch.setattr(CudaMX, "_apply", lambda self, p, x2, add_bias=True: calls.append(("mx", x2.shape[0])) or "mx")
    stub = type("Stub", (), {})()
    stub.CHUNK = 512
    stub.dual_quant_chunkwise = lambda x2, sm, rm, launch_opts=None: (calls.append(("quant", x2.shape[0], rm)) or
                                                                      (None, None, None, "xr", "sa"))
    stub.fp8_chunk_gemm = lambda xr, sa, wr, sw, n, kp, od, **kw: calls.append(("gemm", xr, sa, od, kw["bias"] is p.bias))
    monkeypatch.setitem(common._JIT_MODULES, "fp8tc_dual", stub)
    for m in (1, 16):
        assert kern.apply(p, torch.zeros(m, k, dtype=torch.bfloat16)) == "mx"
    kern.apply(p, torch.zeros(17, k, dtype=torch.bfloat16))
    assert calls == [("mx", 1), ("mx", 16), ("quant", 17, "rint"), ("gemm", "xr", "sa", torch.bfloat16, True)], calls


# ---------------------------------------------------------------------------------------------
# Triton's interpreter (subprocess)
# ---------------------------------------------------------------------------------------------
PRELUDE = """
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import importlib.util, sys, torch
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as itp
    sys.path.insert(0, {here!r})
    from _cuda_cases import edge_rows, same_bits


    def _bf16_conversions():
        # the GPU's fp32 -> bf16 (RNE) and bf16 -> fp32 (exact, subnormals kept), through torch
        B = itp.InterpreterBuilder
        cast, fp = B.cast_impl, B.create_fp_to_fp

        def conv(src, dst):
            s, d = src.dtype.scalar, dst.scalar
            if s == tl.float32 and d == tl.bfloat16:
                x = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
                return itp.TensorHandle(x.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
            if s == tl.bfloat16 and d == tl.float32:
                x = torch.from_numpy(np.ascontiguousarray(src.data).view(np.int16)).view(torch.bfloat16)
                return itp.TensorHandle(x.to(torch.float32).numpy(), tl.float32)
            return None

        def cast_impl(self, src, dst):
            h = conv(src, dst)
            return cast(self, src, dst) if h is None else h

        def create_fp_to_fp(self, src, dst, rm):
            h = conv(src, dst)
            return fp(self, src, dst, rm) if h is None else h

        B.cast_impl, B.create_fp_to_fp = cast_impl, create_fp_to_fp
        B.create_fp_trunc = lambda self, src, dst: self.cast_impl(src, dst)
        B.create_fp_ext = lambda self, src, dst: self.cast_impl(src, dst)


    _bf16_conversions()
    from omni_npu_quant.kernels.cuda.jit import fp8tc_dual as D, ops, twins


    def mutated(old, new):
        # fp8tc_dual with one source line changed, imported from a copy (same package): a deliberately broken kernel
        src = open(D.__file__).read()
        assert src.count(old) == 1, old
        path = {tmp!r} + '/fp8tc_dual_broken_' + str(abs(hash(new))) + '.py'
        open(path, 'w').write(src.replace(old, new))
        name = 'omni_npu_quant.kernels.cuda.jit._fp8tc_dual_broken'
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = 'omni_npu_quant.kernels.cuda.jit'
        spec.loader.exec_module(mod)
        return mod


    fails = []
"""


def _interp(tmp_path, body: str, name: str) -> str:
    """Run ``body`` in a fresh interpreter process (TRITON_INTERPRET=1) from a file (jit functions need their
    source); its stdout must end with 'FAILS []'."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(PRELUDE).format(here=here, tmp=str(tmp_path)) + textwrap.dedent(body)
                      + "\nprint('FAILS', fails)\n")
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop(ENV, None)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]
    return r.stdout


RESCALE = """
    def rows(k, dt, seed):
        x = edge_rows(k, dt, seed=seed)  # random, zero, large, ties, saturation, -0, subnormal (not fp16), NaN, -Inf
        g = torch.Generator().manual_seed(seed)
        extra = torch.randn(3, k, generator=g) * 2
        extra[0, 512 - 64:512 - 32] = 0.0  # an all-zero block inside a chunk
        extra[1, :512] = 0.0  # an all-zero chunk
        extra[2, :512] *= 2.0 ** ((torch.arange(512) // 32) * 4 // 3 - 20).float()  # blocks over 20 binades: inexact
        return torch.cat([x, extra.to(dt)])

    def same(a, b):  # (q, codes, l0, xr, sa) bit for bit (any NaN equals any NaN)
        return all(torch.equal(u, v) for u, v in zip(a[:2], b[:2])) and same_bits(a[2], b[2]) and \\
            torch.equal(a[3], b[3]) and same_bits(a[4].contiguous(), b[4].contiguous())

    broken = mutated("s = tl.where(em > -100000, em - HEADROOM, 0)", "s = tl.where(em > -100000, em - HEADROOM + 1, 0)")
    caught = 0
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        for k in ((512, 1536) if dt == torch.bfloat16 else (1024,)):
            x = rows(k, dt, k)
            sm = (torch.rand(k, generator=torch.Generator().manual_seed(1)) + 0.5).to(dt)
            for smooth in (None, sm):
                for rm in (('rint', 'round') if smooth is None and k < 1536 else ('rint',)):
                    a = D.dual_quant_chunkwise(x, smooth, rm)
                    b = D.twin_dual_quant_chunkwise(x, smooth, rm)
                    if not same(a, b):
                        fails.append(('rescale', str(dt), k, smooth is None, rm))
                    if a[4].shape != (x.shape[0], k // 512) or a[3].shape != (x.shape[0], k):
                        fails.append(('shape', a[3].shape, a[4].shape))
            # the reported MX bytes are cuda.mx's quantizer's (ops.dual_quant)
            a = D.dual_quant_chunkwise(x, None, 'rint')
            if not all(same_bits(u, v) for u, v in zip(ops.dual_quant(x, None, 'rint'), a[:3])):
                fails.append(('mx bytes', str(dt), k))
            # a deliberately broken rescale kernel (row exponent one binade too high) fails the same check
            caught += not same(broken.dual_quant_chunkwise(x, None, 'rint'), D.twin_dual_quant_chunkwise(x, None, 'rint'))
    # NaN / Inf rows: NaN scale on their chunk, zero elements
    x = rows(1024, torch.float32, 3)
    q, c, l0, xr, sa = D.dual_quant_chunkwise(x, None, 'rint')
    if not (torch.isnan(sa[7, 0]) and torch.isnan(sa[8, 1]) and not torch.isnan(sa[:7]).any()):
        fails.append(('nan scales', sa[6:9]))
    if not (sa[1] == 0).all() or not (sa[10, 0] == 0):
        fails.append(('zero chunk scale', sa[1], sa[10]))
    # M = 0 and M = 1
    for m in (0, 1):
        if not same(D.dual_quant_chunkwise(x[:m].contiguous(), None, 'rint'), D.twin_dual_quant_chunkwise(x[:m], None, 'rint')):
            fails.append(('small M', m))
    if caught != 4:
        fails.append(('broken rescale kernel not caught', caught))
"""


GEMM = """
    def ok(o, r, od):  # kernel vs twin: fp32 sums in the interpreter vs float64 sums; NaN where the twin's are
        nan = torch.isnan(r)
        if not torch.equal(torch.isnan(o), nan):
            return False
        o, r = o[~nan].double(), r[~nan].double()
        tol = 1e-5 * r.abs().max().item() + (torch.finfo(od).eps * r.abs()).max().item()
        return (o - r).abs().max().item() <= tol

    broken = mutated("acc = acc + (part * sa[:, None]) * sw[None, :]", "acc = acc + part * sa[:, None]")
    g = torch.Generator().manual_seed(0)
    n_ok = caught = 0
    for m, n, kp in ((5, 24, 512), (17, 40, 1536), (33, 70, 1024)):
        nc = kp // 512
        xr = torch.randn(m, kp, generator=g).mul(30).to(torch.float8_e4m3fn).view(torch.uint8)
        wr = torch.randn(n, kp, generator=g).mul(30).to(torch.float8_e4m3fn).view(torch.uint8)
        xr[1, 64:96] = 0  # an all-zero block
        sa = torch.rand(m, nc, generator=g) * 2.0 ** torch.randint(-14, -4, (m, nc), generator=g).float()
        sw = torch.rand(n, nc, generator=g) * 2.0 ** torch.randint(-14, -4, (n, nc), generator=g).float()
        if nc > 1:
            xr[2, 512:1024] = 0  # an all-zero chunk (scale 0, as an all-zero activation chunk has)
            sa[2, 1] = 0.0
        sa[3, nc - 1] = float('nan')  # a NaN / Inf activation chunk: NaN scale, its row NaN
        sa_t = sa.t().contiguous().t()  # the chunk-major layout chunk_rescale writes
        b = torch.randn(n, generator=g)
        for bias in (None, b):
            for od in ((torch.float32, torch.bfloat16, torch.float16) if bias is not None else (torch.float32,)):
                o = D.fp8_chunk_gemm(xr, sa_t, wr, sw, n, kp, od, bias=bias, m_bucket=ops.m_bucket)
                r = D.twin_fp8_chunk_gemm(xr, sa, wr, sw, torch.float32, bias=bias)
                if o.dtype != od or o.shape != (m, n):
                    fails.append(('gemm out', o.dtype, o.shape))
                if not ok(o.float(), r.to(od).float(), od):
                    fails.append(('gemm', m, n, kp, bias is None, str(od), (o.float() - r).abs().nan_to_num().max().item()))
                else:
                    n_ok += 1
        # a broken twin (chunk scales in the wrong chunk) and a broken kernel (scales dropped) fail the check
        if nc > 1:
            rb = D.twin_fp8_chunk_gemm(xr, sa.roll(1, 1), wr, sw, torch.float32)
            caught += not ok(D.fp8_chunk_gemm(xr, sa_t, wr, sw, n, kp, torch.float32, m_bucket=ops.m_bucket), rb, torch.float32)
        caught += not ok(broken.fp8_chunk_gemm(xr, sa_t, wr, sw, n, kp, torch.float32, m_bucket=ops.m_bucket),
                         D.twin_fp8_chunk_gemm(xr, sa, wr, sw, torch.float32), torch.float32)
    if caught != 5:
        fails.append(('broken gemm / twin not caught', caught))
    print('GEMM CHECKS', n_ok)
"""


APPLY = """
    from omni_npu_quant.backends import CudaBackend, ReferenceBackend
    from omni_npu_quant.kernels.cuda import common
    from omni_npu_quant.schemes.registry import get_scheme

    s = get_scheme('mxfp4_dual')
    ref = ReferenceBackend()
    be = CudaBackend('cpu', mx_fp8tc_dual='on')
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    broken = mutated("acc = acc + (part * sa[:, None]) * sw[None, :]", "acc = acc + part * sw[None, :]")

    def e2(y, yr, dt):  # E2: 1e-3 of the output scale + 1 ulp of the output dtype; NaN where the reference's are
        nan = torch.isnan(yr)
        if not torch.equal(torch.isnan(y), nan):
            return float('inf')
        y, yr = y[~nan], yr[~nan]
        tol = 1e-3 * yr.abs().max().item() + (torch.finfo(dt).eps * yr.abs()).max().item()
        return (y - yr).abs().max().item() / tol

    if CudaBackend('cpu').prepare(s, s.quantize_weight(torch.randn(8, 512, generator=g)), torch.bfloat16).kernel_name \\
            != 'cuda.mx':
        fails.append('default is not cuda.mx')
    for dt, n, k, m, ms in ((torch.bfloat16, 40, 1536, 19, False), (torch.float16, 24, 1024, 17, True),
                            (torch.bfloat16, 70, 512, 33, True)):
        w = torch.randn(n, k, generator=g) * 0.05
        w[2, :512] *= 2.0 ** ((torch.arange(512) // 32) * 4 // 3 - 20).float()  # an inexact weight chunk
        t = s.quantize_weight(w, torch.randn(n, generator=g))
        if ms:
            t['mul_scale'] = torch.rand(k, generator=g) + 0.5
        pr, pc = ref.prepare(s, t, dt), be.prepare(s, t, dt)
        if pc.kernel_name != 'cuda.mx_fp8tc_dual':
            fails.append(('kernel', pc.kernel_name))
        x = (torch.randn(m, k, generator=g) * 2).to(dt)
        x[0] = edge_rows(k, dt, nonfinite=False, seed=k)[3]  # ties
        x[1] = 0.0
        x[2, :32] = 1e-3  # a small block next to normal ones
        x[3, :512] *= (2.0 ** ((torch.arange(512) // 32) * 4 // 3 - 20).float()).to(dt)  # an inexact activation chunk
        x[4, 7] = float('nan')  # a NaN activation: its row is NaN
        x[5, k - 1] = float('inf')
        qa, qc = ref.quantize_activation(pr, x), be.quantize_activation(pc, x)
        if set(qa) != set(qc) or not all(same_bits(qc[key], qa[key]) for key in qa):
            fails.append(('bytes', str(dt), k))
        yr, yc = ref.apply(pr, x).float(), be.apply(pc, x)
        if yc.dtype != dt:
            fails.append(('dtype', yc.dtype))
        if not torch.isnan(yr[4]).all() or not torch.isnan(yr[5]).all():
            fails.append(('reference NaN rows', k))
        ratio = e2(yc.float(), yr, dt)
        worst = max(worst, ratio)
        print('E2', str(dt), n, k, m, 'max |y - ref| / bound =', ratio)
        if ratio > 1:
            fails.append(('apply', str(dt), k, ratio))
        # without bias (add_bias=False) against the reference without bias
        yb = be.apply(pc, x, add_bias=False).float()
        rb = ref.apply(pr, x, add_bias=False).float()
        if e2(yb, rb, dt) > 1:
            fails.append(('apply no bias', str(dt), k))
        # a deliberately broken kernel (the activation chunk scale dropped) fails the same check
        saved = common._JIT_MODULES['fp8tc_dual']
        common._JIT_MODULES['fp8tc_dual'] = broken
        try:
            if e2(be.apply(pc, x).float(), yr, dt) <= 1:
                fails.append(('broken kernel passed E2', str(dt), k))
        finally:
            common._JIT_MODULES['fp8tc_dual'] = saved
    print('WORST E2 RATIO', worst)
"""


@needs_triton
def test_chunk_rescale_in_triton_interpreter(tmp_path):
    _interp(tmp_path, RESCALE, "rescale")


@needs_triton
def test_chunk_gemm_in_triton_interpreter(tmp_path):
    out = _interp(tmp_path, GEMM, "gemm")
    assert "GEMM CHECKS 12" in out, out[-2000:]


@needs_triton
def test_kernel_vs_reference_in_triton_interpreter(tmp_path):
    """The backend with mx_fp8tc_dual='on' picks cuda.mx_fp8tc_dual (default: cuda.mx); its quantize_activation bytes
    are the reference's; apply is within E2 of the reference (bias and no bias, mul_scale, NaN / Inf rows)."""
    out = _interp(tmp_path, APPLY, "apply")
    print(out[-1500:])
