"""cuda.mx_fp8tc on a CPU machine: the rowwise E4M3 rescale twin (exactness window, scales, NaN/zero
rows), the kernel's refusals, and its Triton quantizer / FP8 GEMM in Triton's interpreter against the
pure-torch twins (subprocess, TRITON_INTERPRET=1).  The default quantizer "v2" (jit/fp8tc_quant2.py): its plan
rule, bytes identical to the twin in the interpreter (ties, saturation, subnormals, zeros, NaN / Inf rows, odd K,
Kp 3328 / 12288 / 13824, M 0 / 1 / 3, row tails, bf16 / fp16 / fp32, every round mode and scale rule), the
kernel's choice between the two, and its sm_90a SASS checked for the ptxas miscompile that the interpreter cannot
reproduce (the H200 byte mismatch of 2026-12-02)."""
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


# ---------------------------------------------------------------------------------------------
# activation quantizer "v2" (jit/fp8tc_quant2.py), the default since 2026-12-02 (v1: fp8tc_quant="v1")
# ---------------------------------------------------------------------------------------------
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed in this environment")


def _interp(tmp_path, body: str, name: str) -> str:
    """Run ``body`` in a fresh interpreter process (TRITON_INTERPRET=1) from a file (jit functions need their
    source); returns stdout, which must end with 'FAILS []'."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent("""
        from omni_npu_quant.kernels.cuda.jit import interpret
        interpret.enable()
        import sys, torch
        sys.path.insert(0, {here!r})
        from _cuda_cases import edge_rows, same_bits
        from omni_npu_quant.kernels.cuda.jit import fp8tc, fp8tc_quant2 as q2, twins
        from omni_npu_quant.numerics.constants import E4M3, E2M1
        fails = []
    """).format(here=here) + textwrap.dedent(body) + "\nprint('FAILS', fails)\n")
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]
    return r.stdout


@needs_triton
def test_v2_rowwise_plan_rule():
    from omni_npu_quant.kernels.cuda.jit import fp8tc_quant2 as q2

    def top(kp, n_sm=132):
        return q2.rowwise_plan(kp, n_sm).levels[0]

    # large-M level: (min_m, rows, nb, single, num_warps)
    assert top(13824)[1:4] == (1, 64, False)  # 2048-wide chunks, the last one 3/4 masked (not 8-block chunks)
    assert top(12288)[1:4] == (1, 64, False)
    assert top(8192)[1:4] == (1, 256, True) and top(4096)[1:4] == (1, 128, True)  # read once
    assert top(3072)[1:4] == (4, 32, False) and top(5120)[1:4] == (2, 32, False)
    assert top(3328)[1:4] == (4, 8, False)  # 13 x 256: wider chunks would mask >= 7.7 % (the tile is 4 rows wide)
    assert top(256)[1:4] == (16, 8, True)
    for kp in range(256, 40000, 256):
        plan = q2.rowwise_plan(kp, 132)
        assert plan.kp == kp and plan.levels[-1][0] == 0
        mins = [lv[0] for lv in plan.levels]
        assert mins == sorted(mins, reverse=True) and len(set(mins)) == len(mins), (kp, plan)
        for min_m, rows, nb, single, nw in plan.levels:
            bk = nb * 32
            assert rows & (rows - 1) == 0 and nb & (nb - 1) == 0 and nb >= 8, (kp, plan)
            assert 1 <= nw <= 16 and nw & (nw - 1) == 0, (kp, plan)
            assert (bk >= kp) == single and (not single or bk <= q2.SINGLE_MAX), (kp, plan)
            if min_m:  # large-M levels mask at most kp / 8 (one pass) or kp / 16 (two-pass tail)
                assert (-(-kp // bk) * bk - kp) * (8 if single else 16) <= kp, (kp, plan)
                assert rows * bk <= q2.TILE or rows == 1, (kp, plan)
                assert single or rows * kp <= q2.ROW_BUDGET or rows == 1, (kp, plan)
        # rows halve as M falls below 2 programs per SM
        for m in (1, 100, 263, 264, 1000, 5000, 10 ** 6):
            rows = plan.pick(m)[0]
            assert rows == 1 or -(-m // rows) >= 2 * 132 - 1, (kp, m, rows)
    p = q2.rowwise_plan(3072, 1)
    assert [p.pick(m)[0] for m in (1, 2, 3, 4, 7, 8, 100)] == [1, 1, 1, 2, 2, 4, 4]
    for bad in (0, 100, 300, -256):
        with pytest.raises(ValueError, match="multiple of 256"):
            q2.rowwise_plan(bad)
    with pytest.raises(ValueError, match="n_sm"):
        q2.rowwise_plan(256, 0)


@needs_triton
def test_v2_rowwise_refuses_bad_arguments():
    from omni_npu_quant.kernels.cuda.jit import fp8tc_quant2 as q2
    from omni_npu_quant.numerics.constants import E5M2

    x = torch.zeros(2, 300)
    for args, word in (((x, None, E4M3, "round", 0, 512), "round_mode"), ((x, None, E5M2, "rint", 0, 512), "e5m2"),
                       ((x, None, E2M1, "rint", 0, 256), "more than the padded"),
                       ((x.t(), None, E2M1, "rint", 0, 512), "unit column stride")):
        with pytest.raises(ValueError, match=word):
            q2.mx_quant_rowwise(*args)
    with pytest.raises(ValueError, match="plan is for kp=1024"):
        q2.mx_quant_rowwise(x, None, E2M1, "rint", 0, 512, plan=q2.rowwise_plan(1024))


ELEMENTS = """
    import triton, triton.language as tl
    from omni_npu_quant.numerics.elements import quantize_elements_
    from omni_npu_quant.numerics import mx as MX

    @triton.jit
    def elems(v_ptr, o_ptr, c_ptr, N, ROUND: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        v = tl.load(v_ptr + offs, mask=m)
        tl.store(o_ptr + offs, q2._e2m1_elements(v, ROUND), mask=m)
        tl.store(c_ptr + offs, v.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=m)

    def run(v, rnd):
        o, c = torch.empty_like(v), torch.empty(v.shape, dtype=torch.uint8)
        elems[(-(-v.numel() // 4096),)](v, o, c, v.numel(), ROUND=rnd, BLOCK=4096)
        return o, c

    # structured fp32 values: every exponent from 2**-12 to 2**5 (and fp32 subnormals, 0, huge), mantissas with
    # every top-11-bit pattern x low-bit patterns at the rounding boundaries, both signs; plus random values
    hi = torch.arange(2048, dtype=torch.int32) << 12
    lo = torch.tensor([0, 1, 0x7FF, 0x800, 0x801, 0xFFF], dtype=torch.int32)
    mant = (hi[:, None] | lo[None, :]).flatten()
    exps = torch.tensor([0, 1, 20] + list(range(115, 133)) + [140, 200, 254], dtype=torch.int32)
    bits = ((exps[:, None] << 23) | mant[None, :]).flatten()
    g = torch.Generator().manual_seed(0)
    rnd_bits = torch.randint(0, 2 ** 31 - 1, (200000,), generator=g, dtype=torch.int32) % (0x41800000)  # < 16
    bits = torch.cat([bits, rnd_bits, torch.tensor([0x7F800000], dtype=torch.int32)])  # + Inf
    v = torch.cat([bits, bits | (-2147483648)]).view(torch.float32)
    for rnd, rm in enumerate(("rint", "round", "floor")):
        o, c = run(v, rnd)
        ref = quantize_elements_(v.clone(), E2M1, rm)
        if not torch.equal(o.view(torch.int32), ref.view(torch.int32)):
            bad = (o.view(torch.int32) != ref.view(torch.int32)).nonzero().flatten()[:5]
            fails.append(("e2m1", rm, v[bad].tolist(), o[bad].tolist(), ref[bad].tolist()))
    ref8 = MX.mx_encode(quantize_elements_(v.clone(), E4M3, "rint"), E4M3).view(torch.uint8)
    if not torch.equal(c, ref8):
        fails.append(("e4m3 convert", int((c != ref8).sum())))
    # the re-rounding onto E4M3: every E4M3 / E2M1 element value times every shift the kernel uses
    e4 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    e4 = e4[~torch.isnan(e4)]
    e2 = torch.tensor([0.0, 0.5, 1, 1.5, 2, 3, 4, 6]); e2 = torch.cat([e2, -e2])
    for q, shifts in ((e4, range(-64, 1)), (e2, range(-64, 7))):
        vals = torch.cat([q * 2.0 ** s for s in shifts])
        _, c = run(vals, 0)
        ref = MX.mx_encode(quantize_elements_(vals.clone(), E4M3, "rint"), E4M3).view(torch.uint8)
        if not torch.equal(c, ref):
            fails.append(("rerounding", int((c != ref).sum())))
"""


@needs_triton
def test_v2_element_roundings_in_triton_interpreter(tmp_path):
    """The E2M1 element rounding of the kernel (all three modes) and the FP8 convert it uses (as modelled in the
    interpreter) against numerics.elements, on boundary-dense fp32 values and on the whole re-rounding domain."""
    _interp(tmp_path, ELEMENTS, "elements")


QUANT_CASES = """
    FMTS = [(E4M3, 'rint', 0), (E4M3, 'rint', 1), (E2M1, 'rint', 0), (E2M1, 'round', 1), (E2M1, 'floor', 2)]

    def check(x, smooth, fmt, rm, alg, kp, plan, tag):
        a = q2.mx_quant_rowwise(x, smooth, fmt, rm, alg, kp, plan=plan)
        b = twins.twin_mx_quant_rowwise(x, smooth, fmt, rm, alg, kp)
        ok = all(torch.equal(u, v) for u, v in zip(a[:3], b[:3])) and same_bits(a[3], b[3])
        n = q2.mx_quant_rowwise(x, smooth, fmt, rm, alg, kp, plan=plan, write_mx=False)
        ok = ok and n[0] is None and torch.equal(n[2], a[2]) and same_bits(n[3], a[3])
        if not ok:
            fails.append((tag, str(x.dtype), tuple(x.shape), fmt.name, rm, alg, smooth is None, plan.pick(x.shape[0])))

    def corner(k, dt, seed):
        # a block with a normal max and tiny (subnormal) values of both signs: x * 2**-e underflows
        x = torch.randn(3, k, generator=torch.Generator().manual_seed(seed))
        x[:, 0] = 16.0
        if dt != torch.float16:
            x[0, 1:8] = torch.tensor([-1.401298464324817e-45, 1.401298464324817e-45, -2.0 ** -140, -1e-39, 1e-39,
                                      -3e-41, 2.0 ** -126])
        x[1, 32:64] = 0.0  # an all-zero block inside a row
        x[2, 5] = -0.0
        return x.to(dt)
"""

QUANT_SMALL = QUANT_CASES + """
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        for k in (333, 1000, 4096):  # Kp 512 / 1024 / 4096: one pass; 333: K not a multiple of 32
            kp = -(-k // 256) * 256
            x = torch.cat([edge_rows(k, dt, seed=k), corner(k, dt, k)])
            sm = torch.rand(k, generator=torch.Generator().manual_seed(1)) + 0.5
            for n_sm in (132, 1):  # 1: multi-row programs already at 12 rows (row tails masked)
                plan = q2.rowwise_plan(kp, n_sm)
                for fmt, rm, alg in FMTS:
                    check(x, None, fmt, rm, alg, kp, plan, 'edge')
                check(x, sm, E2M1, 'round', 1, kp, plan, 'smooth')
                check(x, sm, E4M3, 'rint', 0, kp, plan, 'smooth')
            for m in (0, 1, 3):
                check(x[:m].contiguous(), None, E2M1, 'round', 1, kp, q2.rowwise_plan(kp, 1), 'small M')
"""

QUANT_LONG = QUANT_CASES + """
    for dt, k in ((torch.bfloat16, 3104), (torch.float32, 3104), (torch.float16, 3104), (torch.bfloat16, 13800),
                  (torch.float32, 13800), (torch.bfloat16, 12288), (torch.float16, 13824)):
        kp = -(-k // 256) * 256  # 3328 (13 x 256), 13824 (2048-wide chunks, the last 3/4 masked), 12288
        rows = torch.cat([edge_rows(k, dt, seed=k), corner(k, dt, k)])
        if k != 3104:  # random, ties, saturation, subnormal (not fp16), NaN, corner rows
            rows = rows[[0, 3, 4, 6, 7, 9]] if dt != torch.float16 else rows[[0, 3, 4, 6, 8]]
        fmts = FMTS if (dt == torch.bfloat16 and k != 12288) or k == 3104 else [FMTS[0], FMTS[3]]
        for n_sm in ((132, 1) if k == 3104 else (132,)):
            plan = q2.rowwise_plan(kp, n_sm)
            for fmt, rm, alg in fmts:
                check(rows, None, fmt, rm, alg, kp, plan, 'long')
        if dt == torch.bfloat16 and k == 13800:
            sm = torch.rand(k, generator=torch.Generator().manual_seed(2)) + 0.5
            check(rows, sm, E2M1, 'round', 1, kp, q2.rowwise_plan(kp), 'long smooth')
            check(rows[:1].contiguous(), None, E4M3, 'rint', 0, kp, q2.rowwise_plan(kp), 'M=1')
    # random rows through every level of a multi-row plan (M not a multiple of the rows per program)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(37, 3104, generator=g) * 3).to(torch.bfloat16)
    plan = q2.rowwise_plan(3328, 4)  # rows 4 at M >= 32, 2 at >= 16, ...
    for m in (37, 17, 9, 3):
        check(x[:m].contiguous(), None, E4M3, 'rint', 0, 3328, plan, 'levels')
        check(x[:m].contiguous(), None, E2M1, 'round', 1, 3328, plan, 'levels')
    # a row-strided view (stride_xm > K)
    big = (torch.randn(5, 4096, generator=g)).to(torch.bfloat16)
    check(big[:, :3104], None, E4M3, 'rint', 0, 3328, q2.rowwise_plan(3328, 1), 'strided')
"""


@needs_triton
def test_v2_quantizer_one_pass_in_triton_interpreter(tmp_path):
    _interp(tmp_path, QUANT_SMALL, "quant_small")


@needs_triton
def test_v2_quantizer_two_pass_in_triton_interpreter(tmp_path):
    _interp(tmp_path, QUANT_LONG, "quant_long")


KERNEL = """
    from omni_npu_quant import platform as P
    from omni_npu_quant.backends import ReferenceBackend
    from omni_npu_quant.kernels.base import Target
    from omni_npu_quant.kernels.cuda.mx_fp8tc import CudaMXFp8TC
    from omni_npu_quant.schemes.registry import get_scheme

    seen = []
    for mod, tag in ((q2, 'v2'), (fp8tc, 'v1')):
        real = mod.mx_quant_rowwise
        mod.mx_quant_rowwise = (lambda real, tag: lambda *a, **kw: (seen.append((tag, a[2:], kw.get('plan'),
                                kw.get('write_mx'))), real(*a, **kw))[1])(real, tag)
    dev = P.DeviceInfo('cuda', 'sm90', 'sm90')
    opts = {'fp8tc_gemm': 'triton', 'fp8tc_min_m': 1}
    v2 = CudaMXFp8TC(Target(dev, 'cpu', opts))  # the default
    v1 = CudaMXFp8TC(Target(dev, 'cpu', dict(opts, fp8tc_quant='v1')))
    ref = ReferenceBackend()
    g = torch.Generator().manual_seed(0)
    for name, k in (('mxfp8', 3104), ('mxfp4', 13824), ('w4a8_mxfp', 1056)):
        s = get_scheme(name)
        t = s.quantize_weight(torch.randn(32, k, generator=g) * 0.05, torch.randn(32, generator=g))
        x = (torch.randn(3, k, generator=g) * 2).to(torch.bfloat16)
        x[1, :40] = 0.0
        pr = ref.prepare(s, t, torch.bfloat16)
        qa = ref.quantize_activation(pr, x)
        yr = ref.apply(pr, x).float()
        want = (s.act_fmt, s.act_round_mode, s.act_scale_alg)
        for kern, tag in ((v2, 'v2'), (v1, 'v1')):
            p = kern.prepare(s, t, torch.bfloat16, 32, k, name)
            plan = q2.rowwise_plan(p.kp, q2.DEFAULT_SMS) if tag == 'v2' else None
            if p.q_plan != plan:
                fails.append(('plan', tag, name, p.q_plan))
            seen.clear()
            d = kern.quantize_activation(p, x)
            y = kern.apply(p, x)
            calls = [(c[0], c[1][:3], c[1][3], c[2] is p.q_plan, c[3]) for c in seen]  # the prepared plan itself
            if calls != [(tag, want, p.kp, True, True), (tag, want, p.kp, True, False)]:
                fails.append(('calls', tag, name, calls))
            if set(qa) != set(d) or not all(same_bits(d[key], qa[key]) for key in qa):
                fails.append(('bytes', tag, name))
            # E2: 1e-3 of the output scale + 1 bf16 eps (as test_fp8tc_gpu)
            if (y.float() - yr).abs().max().item() > 1e-3 * yr.abs().max().item() + (2 ** -7 * yr.abs()).max().item():
                fails.append(('apply', tag, name, (y.float() - yr).abs().max().item()))
"""


@needs_triton
def test_kernel_runs_the_chosen_quantizer_in_triton_interpreter(tmp_path):
    """quantize_activation and apply of cuda.mx_fp8tc call the quantizer chosen at prepare (the default v2 with the
    plan made at prepare, or v1), and the bytes quantize_activation reports are the reference backend's."""
    _interp(tmp_path, KERNEL, "kernel")


def test_quantizer_option_read_when_the_kernel_is_made(monkeypatch):
    from omni_npu_quant import platform as P
    from omni_npu_quant.kernels.base import Target
    from omni_npu_quant.kernels.cuda import mx_fp8tc as M

    dev = P.DeviceInfo("cuda", "sm90", "sm90")
    monkeypatch.delenv(M.QUANT_ENV, raising=False)
    assert M.CudaMXFp8TC(Target(dev, "cpu")).quant == "v2"  # the default
    monkeypatch.setenv(M.QUANT_ENV, "V1")
    assert M.CudaMXFp8TC(Target(dev, "cpu")).quant == "v1"
    assert M.CudaMXFp8TC(Target(dev, "cpu", {"fp8tc_quant": "v2"})).quant == "v2"  # the option wins
    monkeypatch.setenv(M.QUANT_ENV, "v3")
    with pytest.raises(ValueError, match="fp8tc_quant.*OMNI_NPU_QUANT_FP8TC_QUANT.*'v3'"):
        M.CudaMXFp8TC(Target(dev, "cpu"))
    with pytest.raises(ValueError, match="'fast'"):
        M.CudaMXFp8TC(Target(dev, "cpu", {"fp8tc_quant": "fast"}))


# ---------------------------------------------------------------------------------------------
# the H200 byte mismatch of 2026-12-02: a ptxas miscompile, seen in the SASS (no GPU needed)
# ---------------------------------------------------------------------------------------------
def _probe():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import fp8tc_quant_probe

    return fp8tc_quant_probe


# SASS of the reverted quantizer (commit 0f36ec5, sm_90a, Triton 3.6's ptxas 12.8), write_mx=True, E4M3:
# pass 2 of the bf16 Kp 13824 plan (1 row, 64 blocks, two passes, 8 warps), cut to the lines that matter, and the
# one-pass Kp 4096 plan.  The H200's wrong bytes are exactly what these lines compute: xr pairs (0, 1) and (4, 5) of
# every thread from the previous chunk's E4M3 pair (column 13821 of row 0 held the value of column 11773), and
# in the first chunk from R18 = the pass-1 counter 0x3800 (row 0, 2, 4095: bytes 0 and 48).
H200_LOOP = """
        /*0b80*/                   IADD3 R4, P5, R10, UR14, RZ ;
        /*0cc0*/               @P3 LDG.E.U16 R3, desc[UR18][R6.64] ;
        /*0e10*/                   F2FP.F16.E4M3.UNPACK_B R18, R18 ;
        /*10e0*/                   F2FP.SATFINITE.E4M3.F32.PACK_AB_MERGE_C R21, R10, R19, RZ ;
        /*11d0*/                   HADD2.F32 R10, -RZ, R18.H0_H0 ;
        /*11e0*/                   HADD2.F32 R20, -RZ, R18.H1_H1 ;
        /*1330*/                   F2FP.SATFINITE.E4M3.F32.PACK_AB_MERGE_C R4, R4, R2, R21 ;
        /*13c0*/                   F2FP.SATFINITE.E4M3.F32.PACK_AB_MERGE_C R10, R20, R10, R7 ;
        /*1410*/                   VIADD R17, R17, 0x800 ;
        /*1420*/               @P4 STG.E.64 desc[UR18][R6.64], R4 ;
        /*1430*/               @P4 STG.E.64 desc[UR18][R8.64], R10 ;
        /*1450*/                   PRMT R18, R4, 0x7610, R18 ;
        /*1470*/              @!P3 BRA 0xb80 ;
"""
H200_ONE_PASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*09f0*/                   F2FP.F16.E4M3.UNPACK_B R6, R1 ;
        /*0a50*/                   F2FP.F16.E4M3.UNPACK_B R6, R13 ;
"""
CLEAN_LOOP = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0060*/                   VIADD R1, R1, 0xfffffff8 ;
        /*0080*/                   STL [R1], R4 ;
        /*0100*/                   PRMT R21, RZ, 0x7610, R21 ;
        /*0108*/                   LDL R29, [R1] ;
        /*0110*/               @P6 LDG.E.U16 R21, desc[UR18][R4.64+0x4] ;
        /*0120*/               @P4 LDG.E.128 R8, desc[UR18][R22.64+0x10] ;
        /*0130*/                   LOP3.LUT R24, R9, 0x7fffffff, RZ, 0xc0, !PT ;
        /*0140*/                   SHFL.IDX PT, R31, R6, R11, 0x1f ;
        /*0150*/                   LOP3.LUT R31, R31, 0x80000000, R21, 0xf8, !PT ;
        /*0160*/                   VIADD R17, R17, 0x800 ;
        /*0170*/               @P4 STG.E.64 desc[UR18][R6.64], R24 ;
        /*0180*/              @!P3 BRA 0x100 ;
"""


def test_sass_hazard_check_flags_the_h200_miscompile():
    """The check itself: it flags the two patterns of the reverted build and not the idioms of a clean loop
    (zero-extension PRMT, 128-bit loads, SHFL's predicate result, loop counters, a spill's stack frame)."""
    P = _probe()
    loop = P.sass_hazards(H200_LOOP)
    assert [t for _, t, _ in loop] == ["PRMT R18, R4, 0x7610, R18"], loop
    assert "UNPACK_B R18, R18" in loop[0][2]
    one = P.sass_hazards(H200_ONE_PASS)
    assert [t for _, t, _ in one] == ["F2FP.F16.E4M3.UNPACK_B R6, R1"], one
    assert P.sass_hazards(CLEAN_LOOP) == []


def _compile_ok():
    why = _probe().can_compile() if HAS_TRITON else "triton is not installed"
    if why:
        pytest.skip(f"cannot compile for sm_90a here: {why}")


# the formulation of the reverted commit: E4M3 element values by the FP8 round trip also when the MX bytes are
# stored (the bytes from the same convert)
_FIXED = """        if WRITE_MX:
            # MX bytes wanted too"""
_REVERTED_Q = "            q = _mx_elements(x, e[:, :, None], nan_scale[:, :, None], -6, 3, 448.0, 0)\n"
_REVERTED_STORE = ("_e4m3_code(q), mask=smask)", "v.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=smask)")


def _reverted_module(tmp_path):
    """fp8tc_quant2 with its WRITE_MX E4M3 values made as in commit 0f36ec5, imported from a copy (same package)."""
    import importlib.util as iu

    from omni_npu_quant.kernels.cuda.jit import fp8tc_quant2

    src = open(fp8tc_quant2.__file__).read()
    assert src.count(_FIXED) == 1 and src.count(_REVERTED_Q) == 1 and src.count(_REVERTED_STORE[0]) == 1, \
        "fp8tc_quant2._rows_emit changed: update this test's copy of the reverted formulation"
    src = src.replace(_REVERTED_Q, "            q = v.to(tl.float8e4nv).to(tl.float32)\n")
    src = src.replace(*_REVERTED_STORE)
    path = tmp_path / "fp8tc_quant2_reverted.py"
    path.write_text(src)
    name = "omni_npu_quant.kernels.cuda.jit._fp8tc_quant2_reverted"
    spec = iu.spec_from_file_location(name, path)
    mod = iu.module_from_spec(spec)
    mod.__package__ = "omni_npu_quant.kernels.cuda.jit"
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(name, None)
    return mod


@needs_triton
def test_v2_quantizer_sass_has_no_miscompile(tmp_path):
    """The v2 kernel compiled for sm_90a as launched (the H200's failing plan Kp 13824 two-pass, one pass at 4096,
    bf16 / fp16 / fp32, E4M3 with and without MX bytes, E2M1 with them) has none of the miscompile's patterns, and
    the reverted formulation, compiled the same way, has them (with this ptxas: 12.8 / 12.9)."""
    _compile_ok()
    P = _probe()
    from omni_npu_quant.kernels.cuda.jit import fp8tc_quant2

    cases = [("bf16", "e4m3", True), ("fp16", "e4m3", True), ("fp32", "e4m3", True), ("bf16", "e4m3", False),
             ("fp32", "e4m3", False), ("bf16", "e2m1", True)]
    levels = [(1, 64, False, 8), (1, 128, True, 16)]  # rowwise_plan(13824) and rowwise_plan(4096) at any M
    assert fp8tc_quant2.rowwise_plan(13824).pick(4096) == levels[0]
    assert fp8tc_quant2.rowwise_plan(4096).pick(4096) == levels[1]
    bad = []
    for dt, name, wm in cases:
        fmt, rm, alg = P.FORMATS[name]
        for level in levels:
            hz = P.sass_hazards(P.sass_of(P.compile_rowwise(fp8tc_quant2, dt, fmt, rm, alg, level, write_mx=wm)))
            if hz:
                bad.append((dt, name, wm, level, hz))
    assert not bad, bad
    old = _reverted_module(tmp_path)
    fmt, rm, alg = P.FORMATS["e4m3"]
    flagged = [bool(P.sass_hazards(P.sass_of(P.compile_rowwise(old, "bf16", fmt, rm, alg, lv, write_mx=True))))
               for lv in levels]
    assert flagged == [True, True], "the reverted formulation compiles clean here: a fixed ptxas? (see docs/cuda.md)"
