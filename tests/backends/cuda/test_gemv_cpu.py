"""The small-M kernels of kernels/cuda/jit/gemv.py in Triton's interpreter (CPU) against their twins:
MX (mxfp8 / mxfp4 / w4a8 / dual; GEMV and tl.dot forms, every config) within the E1 tolerance
(1e-5 * max|ref|; NaN pattern identical), int8 (dynamic and static) bit-identical to the twin and
to ``ops.int8_gemm``.  Inputs: random rows plus ties, saturation, subnormals, zero rows, NaN/Inf
activations, NaN scale code 255, tiny / large scale codes, NaN E4M3 weight bytes, odd N, K padded.

Interpreter limits (Triton 3.6): fp32 -> bf16 casts truncate, so bf16 outputs are GPU-only
(test_gemv_gpu.py); the E4M3 hardware conversion is replaced by bit arithmetic.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

SCRIPT = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import sys, torch
    sys.path.insert(0, {here!r})
    from _cuda_cases import edge_rows
    from omni_npu_quant.kernels.cuda.jit import gemv, ops, twins
    from omni_npu_quant.numerics.constants import E2M1, E4M3
    fails = []
    checked = [0]
    def close(o, r, what, extra_tol=0.0):
        checked[0] += 1
        o = o.float()
        if o.shape != r.shape or not torch.equal(torch.isnan(o), torch.isnan(r)):
            fails.append(('nan/shape', what)); return
        inf = torch.isinf(r)
        if not torch.equal(o[inf], r[inf]):
            fails.append(('inf', what)); return
        fin = torch.isfinite(r)
        if fin.any():
            tol = 1e-5 * r[fin].abs().amax().clamp(min=1.0).item() + 1e-6 + extra_tol
            d = (o[fin] - r[fin]).abs().max().item()
            if not d <= tol:
                fails.append((what, d, tol))
    g = torch.Generator().manual_seed(0)
    FMTS = [(E4M3, E4M3), (E2M1, E2M1), (E4M3, E2M1)]
    # --- MX: random + edge rows, odd N, K padded, M = 1..16, bias, fp32 / fp16 outputs
    for afmt, wfmt in FMTS:
        n, k = 37, 333
        kp = 512
        w = torch.randn(n, k, generator=g)
        w[3] = 0.0
        w[4, :40] = 1e-30  # tiny block
        wq, wsc, _ = twins.twin_mx_quant(w, None, wfmt, 'rint', 0, kp)
        wsc[5, 2] = 255  # NaN scale -> NaN column 5
        wsc[6, :] = 1  # 2**-126
        wsc[7, :] = 150
        if wfmt is E4M3:
            wq[8, 10] = 0x7F  # NaN element
        xe = edge_rows(k, torch.float32, seed=1)
        bias = torch.randn(n, generator=g)
        for m in range(1, 17):
            x = torch.cat([xe, torch.randn(16, k, generator=g) * 2])[:m] if m % 2 else torch.randn(m, k, generator=g)
            aq, asc, _ = twins.twin_mx_quant(x, None, afmt, 'rint', 0, kp)
            if m == 16:
                asc[1, :] = 140
            for b in ((bias, None) if m in (1, 5, 16) else (bias,)):
                r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, kp, torch.float32, afmt, wfmt, bias=b)
                for od in ((torch.float32, torch.float16) if m in (1, 4, 16) else (torch.float32,)):
                    o = gemv.mx_gemv(aq, asc, wq, wsc, n, kp, od, afmt is E2M1, wfmt is E2M1, bias=b)
                    if o.dtype != od:
                        fails.append(('dtype', od))
                    rr = r if od == torch.float32 else r.to(od).float()
                    close(o, rr, ('mx', afmt.name, wfmt.name, m, od, b is None),
                          0.0 if od == torch.float32
                          else torch.finfo(od).eps * rr[torch.isfinite(rr)].abs().max().item())
    # --- every config, both forms, ties / saturation rows in the weight
    n, k = 48, 1024
    for afmt, wfmt in FMTS:
        w = torch.cat([edge_rows(k, torch.float32, seed=2, nonfinite=False), torch.randn(n, k, generator=g)])[:n]
        wq, wsc, _ = twins.twin_mx_quant(w, None, wfmt, 'floor' if wfmt is E2M1 else 'rint', 0, k)
        for m in (1, 3, 8):
            aq, asc, _ = twins.twin_mx_quant(torch.randn(m, k, generator=g), None, afmt, 'rint', 0, k)
            r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, afmt, wfmt)
            for bm, cfgs in gemv.MX_CONFIGS.items():
                for cfg in cfgs:
                    for dot in (False, True):
                        if not dot and m > 4:
                            continue
                        o = gemv.mx_gemv(aq, asc, wq, wsc, n, k, torch.float32, afmt is E2M1, wfmt is E2M1,
                                         cfg=cfg, dot=dot)
                        close(o, r, ('cfg', afmt.name, wfmt.name, m, cfg, dot))
    # --- dual-scale MXFP4
    n, k = 33, 1024
    wq, wsc, l0w = twins.twin_dual_quant(torch.randn(n, k, generator=g), None, 'rint')
    for m in (1, 2, 7, 16):
        aq, asc, l0 = twins.twin_dual_quant(torch.randn(m, k, generator=g) * 3, None, 'rint')
        b = torch.randn(n, generator=g)
        r = twins.twin_mx_gemm(aq, asc, wq, wsc, n, k, torch.float32, E2M1, E2M1, bias=b, l0x=l0, l0w=l0w)
        o = gemv.mx_gemv(aq, asc, wq, wsc, n, k, torch.float32, True, True, bias=b, l0x=l0, l0w=l0w)
        close(o, r, ('dual', m))
    # --- int8: bit-identical to the twin and to the current GEMM
    for n, k in ((40, 200), (67, 1000)):
        w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        w[0] = 127; w[1] = -127
        ws, b = torch.rand(n, 1, generator=g), torch.randn(n, generator=g)
        qb, deq = torch.randint(-900, 900, (n,), generator=g, dtype=torch.int32), torch.rand(n, generator=g) * 1e-3
        for m in range(1, 17):
            q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
            q[0] = 127
            sx = torch.rand(m, generator=g)
            for od in ((torch.float32, torch.float16) if m in (1, 2, 4, 5, 16) else (torch.float32,)):
                for bb in (b, None):
                    checked[0] += 1
                    o = gemv.int8_gemv(q, w, od, sx=sx, ws=ws, bias=bb)
                    if not (torch.equal(o, twins.twin_int8_gemm(q, w, od, sx=sx, ws=ws, bias=bb))
                            and torch.equal(o, ops.int8_gemm(q, w, od, sx=sx, ws=ws, bias=bb))):
                        fails.append(('int8_dyn', n, k, m, od, bb is None))
                for qbb in (qb, None):
                    checked[0] += 1
                    o = gemv.int8_gemv(q, w, od, quant_bias=qbb, deq=deq, static=True)
                    if not torch.equal(o, twins.twin_int8_gemm(q, w, od, quant_bias=qbb, deq=deq, static=True)):
                        fails.append(('int8_static', n, k, m, od, qbb is None))
            if m in (1, 3, 16):
                for cfg in gemv.INT8_CONFIGS[16]:
                    for dot in ((False, True) if m <= 4 else (True,)):
                        checked[0] += 1
                        o = gemv.int8_gemv(q, w, torch.float32, sx=sx, ws=ws, bias=b, cfg=cfg, dot=dot)
                        if not torch.equal(o, twins.twin_int8_gemm(q, w, torch.float32, sx=sx, ws=ws, bias=b)):
                            fails.append(('int8_cfg', m, cfg, dot))
    print('CHECKED', checked[0])
    print('FAILS', fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_gemv_kernels_in_triton_interpreter():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(here=here)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]
    assert int(r.stdout.split("CHECKED")[1].split()[0]) > 300


def test_gemv_switch_and_plans():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed in this environment")
    from omni_npu_quant.kernels.cuda.jit import gemv

    old = os.environ.pop(gemv.ENV, None)
    try:
        assert not gemv.enabled()  # default off
        os.environ[gemv.ENV] = "1"
        assert gemv.enabled() and not gemv.enabled(False) and not gemv.enabled("0")
        os.environ[gemv.ENV] = "yes please"
        with pytest.raises(ValueError, match=gemv.ENV):
            gemv.enabled()
    finally:
        os.environ.pop(gemv.ENV, None)
        if old is not None:
            os.environ[gemv.ENV] = old
    assert [gemv.m_block(m) for m in (1, 2, 3, 4, 5, 16)] == [1, 2, 4, 4, 16, 16]
    with pytest.raises(ValueError, match="M <= 16"):
        gemv.m_block(17)
    for n, k, unit in [(8192, 8192, 256), (12288, 3072, 256), (5120, 13824, 256), (33, 1024, 512), (7, 200, 256)]:
        ks, split = gemv.split_for(-(-n // 64), k, unit)
        assert ks % unit == 0 and (split - 1) * ks < k <= split * ks
    bn, bk, nw, ns, ks, split = gemv.plan("mx", 8192, 8192, 1)
    assert 8192 % bk == 0 and split * ks >= 8192


BACKEND_SCRIPT = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    from omni_npu_quant import platform as P
    from omni_npu_quant.kernels.base import Target
    from omni_npu_quant.kernels.cuda.mx import CudaMX
    from omni_npu_quant.kernels.cuda.int8 import CudaInt8Dynamic, CudaInt8Static
    from omni_npu_quant.backends import ReferenceBackend
    from omni_npu_quant.schemes.registry import get_scheme
    g = torch.Generator().manual_seed(0)
    fails = []
    ref = ReferenceBackend()
    for name, cls in [("mxfp8", CudaMX), ("mxfp4", CudaMX), ("w4a8_mxfp", CudaMX), ("mxfp4_dual", CudaMX),
                      ("w8a8_dynamic", CudaInt8Dynamic), ("w8a8_static", CudaInt8Static)]:
        s = get_scheme(name)
        n, k = 37, (1024 if name == "mxfp4_dual" else 320)
        w = torch.randn(n, k, generator=g) * 0.05
        b = torch.randn(n, generator=g)
        t = s.quantize_weight(w, b, act_min=-4.0, act_max=5.0) if name == "w8a8_static" else s.quantize_weight(w, b)
        t.pop("weight_offset", None) if name == "w8a8_static" else None
        dt = torch.float16
        new = cls(Target(P.DeviceInfo("cuda", "sm90", "sm90"), "cpu", {"gemv": 1}))
        old = cls(Target(P.DeviceInfo("cuda", "sm90", "sm90"), "cpu", {"gemv": 0}))
        pn, po, pr = new.prepare(s, t, dt, n, k, name), old.prepare(s, t, dt, n, k, name), ref.prepare(s, t, dt)
        assert pn.gemv and not po.gemv
        for m in ((1, 3, 16, 17) if name.startswith("w8a8") else (1, 3, 16)):
            x = (torch.randn(m, k, generator=g) * 2).to(dt)
            yn = new._apply(pn, x).float(); yr = ref.apply(pr, x).float()
            if name.startswith("w8a8"):
                ok = torch.equal(yn, old._apply(po, x).float())
            else:
                tol = 1e-5 * yr.abs().max().item() + (torch.finfo(dt).eps * yr.abs()).amax().item()
                ok = (yn - yr).abs().max().item() <= tol
            if not ok: fails.append((name, m))
    print("FAILS", fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_kernels_with_gemv_option_in_triton_interpreter():
    """cuda.mx / cuda.int8_* with backend option gemv=1 (prepare + _apply in the interpreter) vs the reference
    backend (MX, E1) and vs the same kernel with gemv=0 (int8, bit-identical); M = 17 takes the old path."""
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]


def test_gemv_kernels_compile_for_sm90():
    """Every default config of the new kernels compiles to PTX/cubin for sm90 on this CPU machine (Triton's own
    ptxas; no GPU): catches lowering errors the interpreter cannot see (fp8 pointers, layouts)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed in this environment")
    code = textwrap.dedent("""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from omni_npu_quant.kernels.cuda.jit import gemv
        tgt = GPUTarget("cuda", 90, 32)
        def comp(fn, sig, consts, div, nw, ns):
            attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in div}
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=tgt,
                               options={"num_warps": nw, "num_stages": ns, "enable_fp_fusion": False})
            assert ".ftz" not in k.asm["ptx"]  # the FP4 decode relies on fp32 subnormals
        ints = ["M", "N", "KP", "K_SLICE", "stride_am", "stride_asm", "stride_wn", "stride_wsn", "stride_l0x",
                "stride_l0w"]
        done = 0
        for afp4, wfp4 in [(False, False), (True, True), (False, True)]:
            for bm, dot in [(1, False), (4, False), (16, True)]:
                sig = {"a_ptr": "*i32" if wfp4 and not dot else "*u8" if afp4 else "*fp8e4nv", "as_ptr": "*u8",
                       "w_ptr": "*i32" if wfp4 else "*fp8e4nv", "ws_ptr": "*u8", "part_ptr": "*fp32",
                       "l0x_ptr": "*fp32", "l0w_ptr": "*fp32", **{a: "i32" for a in ints}}
                bn, bk, nw, ns = gemv.MX_CONFIGS[bm][0]
                consts = dict(A_FP4=afp4, W_FP4=wfp4, DUAL=afp4 and bm == 1, HW8=True, BLOCK_M=bm, BLOCK_N=bn,
                              BLOCK_K=bk, DOT=dot, DOT_BF16=True)
                sig.update({c: "constexpr" for c in consts})
                comp(gemv.mx_gemv_kernel, sig, consts, ["a_ptr", "w_ptr", "N", "KP", "stride_am", "stride_wn"], nw, ns)
                done += 1
        sig = {"a_ptr": "*i8", "w_ptr": "*i8", "part_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
               "K_SLICE": "i32", "stride_am": "i32", "stride_wn": "i32", "BLOCK_M": "constexpr",
               "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "DOT": "constexpr"}
        for bm, dot in [(1, False), (4, False), (16, True)]:
            bn, bk, nw, ns = gemv.INT8_CONFIGS[bm][0]
            comp(gemv.int8_gemv_kernel, sig, dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT=dot),
                 ["a_ptr", "w_ptr", "N", "K", "stride_wn"], nw, ns)
            done += 1
        sig = {"part_ptr": "*i32", "out_ptr": "*bf16", "sx_ptr": "*fp32", "ws_ptr": "*fp32", "bias_ptr": "*fp32",
               "qb_ptr": "*i32", "deq_ptr": "*fp32", "MN": "i32", "N": "i32", "SPLIT": "i32", "MODE": "constexpr",
               "HAS_BIAS": "constexpr", "BLOCK": "constexpr"}
        for mode in (0, 1):
            comp(gemv.int8_reduce_kernel, sig, dict(MODE=mode, HAS_BIAS=True, BLOCK=1024), [], 4, 1)
            done += 1
        print("COMPILED", done)
    """)
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if r.returncode and ("ptxas" in r.stderr and "not found" in r.stderr):
        pytest.skip("Triton's ptxas is not available here")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "COMPILED 14" in r.stdout, r.stdout[-2000:]
