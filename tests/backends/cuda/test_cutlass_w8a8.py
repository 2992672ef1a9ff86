"""CPU tests of the vLLM CUTLASS int8 kernel entries (cuda.cutlass_w8a8, cuda.cutlass_w8a8_static).

No GPU and no compiled vLLM op here: the refusal reasons are checked directly, and the call contract with a
fake ``vllm._custom_ops`` (in a subprocess, our Triton quantizer in Triton's interpreter): the operands we
pass (dtypes, shapes, layouts, scale and bias layouts, the azp_adj of the static path) are asserted against
vLLM's documented contract and our reference quantizer, and the fake computes vLLM's c3x epilogue in the
same operation order, so the post-processed output is compared with the reference kernel.  The compiled
CUTLASS GEMM itself is untested (the entries say so).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from omni_npu_quant.kernels.base import KernelRefusal, Target
from omni_npu_quant.kernels.cuda import cutlass_w8a8 as CW
from omni_npu_quant.kernels.cuda.common import UNTESTED
from omni_npu_quant.platform import DeviceInfo
from omni_npu_quant.schemes.registry import get_scheme

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SM90 = DeviceInfo("cuda", "sm90", "H200", probed=True)


def _kernel(cls=CW.CudaCutlassW8A8, device=SM90, **options):
    return cls(Target(device, "cpu", options=options))


@pytest.fixture
def fake_vllm(monkeypatch):
    """A fake vllm._custom_ops whose compiled ops count as loaded; returns the module."""
    mod = types.ModuleType("vllm._custom_ops")
    mod.cutlass_scaled_mm = lambda *a, **k: None
    mod.cutlass_scaled_mm_azp = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm._custom_ops", mod)
    monkeypatch.setattr(CW, "_op_loaded", lambda name: True)
    monkeypatch.setattr(CW, "_PROBE", {})
    return mod


def test_registered_before_triton_int8_and_untested_label():
    from omni_npu_quant.kernels.registry import candidate_classes

    names = [c.name for c in candidate_classes("cuda")]
    assert names.index("cuda.cutlass_w8a8") < names.index("cuda.int8_dynamic")
    assert names.index("cuda.cutlass_w8a8_static") < names.index("cuda.int8_static")
    assert _kernel().verified == UNTESTED and "untested" in UNTESTED


@pytest.mark.parametrize("device, match", [
    (DeviceInfo("cuda", None, "x", probed=True, detail="no CUDA device"), "no CUDA device"),
    (DeviceInfo("cuda", "sm100", "B200", probed=True), "cc >= 10.0"),
    (DeviceInfo("cuda", "sm89", "L40S", probed=True), "SM90 \\(c3x\\) epilogue"),
])
def test_family_refusals(device, match):
    import re

    ok, why = CW.CudaCutlassW8A8.is_supported(device)
    assert not ok and re.search(match, why), why


def test_auto_mode_refuses_without_a_measured_preference(monkeypatch):
    monkeypatch.setattr(CW, "PREFERENCE", {})
    monkeypatch.delenv(CW.CUTLASS_ENV, raising=False)
    ok, why = _kernel().can_implement(get_scheme("w8a8_dynamic"), 64, 256, torch.bfloat16)
    assert not ok and "no measured speed advantage" in why and "sm90/w8a8_dynamic" in why
    ok, why = _kernel(cutlass="off").can_implement(get_scheme("w8a8_dynamic"), 64, 256, torch.bfloat16)
    assert not ok and "disabled" in why
    with pytest.raises(ValueError, match="cutlass .* must be one of"):
        _kernel(cutlass="fast").can_implement(get_scheme("w8a8_dynamic"), 64, 256, torch.bfloat16)


def test_vllm_not_importable_or_not_compiled(monkeypatch):
    monkeypatch.setattr(CW, "_PROBE", {})
    monkeypatch.setitem(sys.modules, "vllm._custom_ops", None)  # import raises ImportError
    ok, why = CW.CudaCutlassW8A8.is_supported(SM90)
    assert not ok and "vllm._custom_ops does not import" in why
    mod = types.ModuleType("vllm._custom_ops")
    mod.cutlass_scaled_mm = lambda *a: None
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm._custom_ops", mod)
    monkeypatch.setattr(CW, "_PROBE", {})
    monkeypatch.setattr(CW, "_op_loaded", lambda name: False)
    ok, why = CW.CudaCutlassW8A8.is_supported(SM90)
    assert not ok and "compiled CUDA ops are not loaded" in why and "torch.ops._C.cutlass_scaled_mm" in why
    ok, why = CW.CudaCutlassW8A8Static.is_supported(SM90)
    assert not ok and "has no cutlass_scaled_mm_azp" in why
    # a named profile (capability tables): packages are not looked at, the mode / preference decide
    assert CW.CudaCutlassW8A8.is_supported(DeviceInfo("cuda", "sm90", "sm90")) == (True, "")


def test_interpreter_refuses_without_importing_vllm(monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm._custom_ops", raising=False)
    monkeypatch.setattr(CW, "_PROBE", {})
    interp = DeviceInfo("cuda", "sm90", "triton-interpreter", probed=True, interpreted=True)
    ok, why = CW.CudaCutlassW8A8.is_supported(interp)
    assert not ok and "interpreter" in why and CW._PROBE == {}


def test_fake_ops_pass_is_supported(fake_vllm):
    assert CW.CudaCutlassW8A8.is_supported(SM90) == (True, "")
    assert CW.CudaCutlassW8A8Static.is_supported(SM90) == (True, "")


def test_shape_and_dtype_refusals(fake_vllm):
    k = _kernel(cutlass="on")
    s = get_scheme("w8a8_dynamic")
    assert k.can_implement(s, 64, 256, torch.bfloat16) == (True, "")
    ok, why = k.can_implement(s, 40, 256, torch.bfloat16)
    assert not ok and "multiples of 16" in why
    ok, why = k.can_implement(s, 64, 264, torch.float16)
    assert not ok and "multiples of 16" in why
    ok, why = k.can_implement(s, 64, 256, torch.float32)
    assert not ok and "bf16 / fp16 only" in why
    ok, why = k.can_implement(get_scheme("mxfp4"), 64, 256, torch.bfloat16)
    assert not ok and "implements w8a8_dynamic" in why


def test_prepare_refusals(fake_vllm):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 256, generator=g)
    s = get_scheme("w8a8_dynamic")
    t = s.quantize_weight(w, None)
    t["weight_scale"] = torch.rand(32, 2, generator=g) + 0.1  # two groups of 128 per row
    with pytest.raises(KernelRefusal, match="2 weight-scale groups"):
        _kernel(cutlass="on").prepare(s, t, torch.bfloat16, 32, 256, "layer")
    ss = get_scheme("w8a8_static")
    ts = ss.quantize_weight(w, torch.randn(32, generator=g), act_min=-2.0, act_max=3.0)
    ts["quant_bias"] = ts["quant_bias"].clone().to(torch.int32)
    ts["quant_bias"][3] = CW.INT32_MIN
    with pytest.raises(KernelRefusal, match="overflows int32"):
        _kernel(CW.CudaCutlassW8A8Static, cutlass="on").prepare(ss, ts, torch.bfloat16, 32, 256, "layer")


def test_choice_follows_the_preference_table(monkeypatch):
    monkeypatch.setattr(CW, "PREFERENCE", {("sm90", "w8a8_dynamic"): ((16, "triton"), (None, "cutlass"))})
    assert [CW.choice("sm90", "w8a8_dynamic", m) for m in (1, 16, 17, 9999)] == ["triton"] * 2 + ["cutlass"] * 2
    assert CW.choice("sm90", "w8a8_static", 4096) == "triton"
    assert CW.choice("sm90", "w8a8_static", 1, "on") == "cutlass"


CONTRACT_SCRIPT = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import sys, types, torch
    calls = []
    def _contract(a, b, scale_a, scale_b, out_dtype, bias):
        # vllm-project/vllm _custom_ops.py and csrc scaled_mm_entry: int8 A row-major (M, K), B column-major (K, N),
        # fp32 contiguous scales (per-tensor or per-token / per-channel), bf16/fp16 out, bias in the out dtype
        assert a.dtype == torch.int8 and b.dtype == torch.int8 and a.dim() == 2 and b.dim() == 2
        assert a.shape[1] == b.shape[0] and a.stride(1) == 1 and b.stride(0) == 1
        assert b.shape[0] % 16 == 0 and b.shape[1] % 16 == 0
        assert out_dtype in (torch.bfloat16, torch.float16)
        assert scale_a.dtype == torch.float32 and scale_b.dtype == torch.float32
        assert scale_a.is_contiguous() and scale_b.is_contiguous()
        assert scale_a.numel() in (1, a.shape[0]) and scale_b.numel() in (1, b.shape[1])
        assert bias is None or (bias.numel() == b.shape[1] and bias.dtype == out_dtype)
        return (a.double() @ b.double()).to(torch.int32)  # exact int32 accumulation
    def cutlass_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias=None):
        acc = _contract(a, b, scale_a, scale_b, out_dtype, bias)
        calls.append(('mm', a, b, scale_a, scale_b, out_dtype, bias))
        v = scale_b.reshape(1, -1) * acc.float()  # ScaledEpilogue(Bias) c3x: s_b * fp32(acc) in fp32 ...
        d = scale_a.reshape(-1, 1).double() * v.double()  # ... then fma(s_a, v, bias): exact in fp64, one rounding
        if bias is not None:
            d = d + bias.double()
        return d.float().to(out_dtype)
    def cutlass_scaled_mm_azp(a, b, scale_a, scale_b, out_dtype, azp_adj, azp=None, bias=None):
        acc = _contract(a, b, scale_a, scale_b, out_dtype, bias)
        assert azp is None and azp_adj.dtype == torch.int32 and azp_adj.numel() == b.shape[1] and scale_a.numel() == 1
        calls.append(('azp', a, b, scale_a, scale_b, out_dtype, azp_adj))
        v = scale_b.reshape(1, -1) * (acc - azp_adj.reshape(1, -1)).float()  # ScaledEpilogueBiasAzp
        return (scale_a.reshape(-1, 1).double() * v.double()).float().to(out_dtype)
    fake = types.ModuleType('vllm._custom_ops')
    fake.cutlass_scaled_mm, fake.cutlass_scaled_mm_azp = cutlass_scaled_mm, cutlass_scaled_mm_azp
    sys.modules['vllm'] = types.ModuleType('vllm'); sys.modules['vllm._custom_ops'] = fake
    from omni_npu_quant.kernels.cuda import cutlass_w8a8 as CW
    CW._op_loaded = lambda name: True
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.numerics import int8 as I
    from omni_npu_quant.schemes.registry import get_scheme
    fails = []
    def check(ok, what):
        if not ok:
            fails.append(what)
    g = torch.Generator().manual_seed(0)
    n, k = 48, 256
    w = torch.randn(n, k, generator=g) * 0.05
    bias = torch.randn(n, generator=g)
    s = get_scheme('w8a8_dynamic')
    be, ref = CudaBackend(device='cpu', cutlass='on'), CudaBackend(device='cpu', kernel='reference.int8_dynamic')
    for dt in (torch.bfloat16, torch.float16):
        for with_bias in (False, True):
            t = s.quantize_weight(w, bias if with_bias else None)
            p, rp = be.prepare(s, dict(t), dt), ref.prepare(s, dict(t), dt)
            check(p.kernel_name == 'cuda.cutlass_w8a8', ('selected', p.kernel_name))
            x = (torch.randn(5, k, generator=g) * 3).to(dt)
            for add_bias in (True, False):
                calls.clear()
                y, yr = be.apply(p, x, add_bias=add_bias), ref.apply(rp, x, add_bias=add_bias)
                check(len(calls) == 1 and calls[0][0] == 'mm', ('one call', dt, with_bias))
                _, a, b, sa, sb, od, bb = calls[0]
                q, sc = I.dynamic_quant_int8(x)
                check(torch.equal(a, q) and sa.shape == (5, 1) and torch.equal(sa.reshape(-1), sc), ('act', dt))
                check(b.shape == (k, n) and torch.equal(b.t(), t['weight']), ('weight layout', dt))
                check(sb.shape == (n, 1) and torch.equal(sb.reshape(-1), t['weight_scale'].float().reshape(-1)),
                      ('weight scale', dt))
                check(od == dt and y.dtype == dt and y.shape == (5, n), ('out dtype', dt))
                if with_bias and add_bias:
                    check(bb is not None and torch.equal(bb, bias.to(dt)), ('bias operand', dt))
                    # E2: fused multiply-add and the bias rounded once to the output dtype
                    tol = yr.float().abs() * 2.0 ** -7 + (bias - bias.to(dt).float()).abs() + 1e-6
                    check(bool(((y.float() - yr.float()).abs() <= tol).all()), ('bias E2', dt))
                else:
                    check(bb is None, ('no bias operand', dt))
                    check(torch.equal(y, yr), ('E0 without bias', dt, with_bias, add_bias))
    # static: azp epilogue with azp_adj = -quant_bias, bit-identical to the reference
    ss = get_scheme('w8a8_static')
    bes, refs = CudaBackend(device='cpu', cutlass='on'), CudaBackend(device='cpu', kernel='reference.int8_static')
    for dt in (torch.bfloat16, torch.float16):
        ts = ss.quantize_weight(w, bias, act_min=-4.0, act_max=5.0)
        p, rp = bes.prepare(ss, dict(ts), dt), refs.prepare(ss, dict(ts), dt)
        check(p.kernel_name == 'cuda.cutlass_w8a8_static', ('selected static', p.kernel_name))
        x = (torch.randn(7, k, generator=g) * 2).to(dt)
        for add_bias in (True, False):
            calls.clear()
            y, yr = bes.apply(p, x, add_bias=add_bias), refs.apply(rp, x, add_bias=add_bias)
            check(len(calls) == 1 and calls[0][0] == 'azp', ('static call', dt))
            _, a, b, sa, sb, od, adj = calls[0]
            check(torch.equal(a, rp.kernel.quantize_activation(rp, x)['x_q']), ('static act', dt))
            qb = ts['quant_bias'].to(torch.int32).reshape(1, -1)
            check(torch.equal(adj, -qb if add_bias else torch.zeros_like(qb)), ('azp_adj', dt, add_bias))
            check(torch.equal(sa, torch.ones(1, 1)) and torch.equal(sb, rp.deq.float().reshape(-1)), ('static scales', dt))
            check(torch.equal(y, yr), ('static E0', dt, add_bias))
    # auto mode with a measured preference: M <= 16 runs our Triton int8 GEMM, larger M the CUTLASS op
    CW.PREFERENCE[('sm90', 'w8a8_dynamic')] = ((16, 'triton'), (None, 'cutlass'))
    bea = CudaBackend(device='cpu')
    t = s.quantize_weight(w, bias)
    p, rp = bea.prepare(s, dict(t), torch.float16), ref.prepare(s, dict(t), torch.float16)
    check(p.kernel_name == 'cuda.cutlass_w8a8', ('auto selected', p.kernel_name))
    for m, n_calls in ((4, 0), (20, 1)):
        calls.clear()
        x = torch.randn(m, k, generator=g).to(torch.float16)
        y, yr = bea.apply(p, x), ref.apply(rp, x)
        check(len(calls) == n_calls, ('auto calls', m, len(calls)))
        if n_calls == 0:
            check(torch.equal(y, yr), ('auto Triton E0', m))
    print('FAILS', fails)
""")


def test_call_contract_with_a_fake_vllm_op():
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop(CW.CUTLASS_ENV, None)
    r = subprocess.run([sys.executable, "-c", CONTRACT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_sm100_native_mx_paths_stay_behind_their_checks_on_sm90():
    """Issue 14 item 3: SM100 paths (native MX MMA) are refused or not taken on SM90, each with its reason."""
    from omni_npu_quant.kernels.cuda.mx import CudaMX
    from omni_npu_quant.kernels.cuda.mx_fp8tc import CudaMXFp8TC

    sm100 = DeviceInfo("cuda", "sm100", "B200", probed=True)
    ok, why = CudaMXFp8TC.is_supported(sm100)
    assert not ok and "native MX tensor cores" in why
    ok, why = CW.CudaCutlassW8A8Static.is_supported(sm100)
    assert not ok and "cc >= 10.0" in why
    on_sm90 = CudaMX(Target(SM90, "cpu")).mode(get_scheme("mxfp4"))[1]
    on_sm100 = CudaMX(Target(sm100, "cpu")).mode(get_scheme("mxfp4"))[1]
    assert "no MX tensor cores on SM90" in on_sm90 and "native MX" not in on_sm90
    assert "native MX tensor cores" in on_sm100 and "untested" in on_sm100
