"""NPU backend on the CPU emulator (A2 and A5 profiles) against the exact reference backend."""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.backends import NpuBackend, NpuPrepareError
from omni_npu_quant.backends import ReferenceBackend
from omni_npu_quant.numerics.gemm import mx_matmul
from omni_npu_quant.schemes.base import SchemeValidationError, apply_mul_scale
from omni_npu_quant.schemes.registry import get_scheme

BF16, FP16, F32 = torch.bfloat16, torch.float16, torch.float32
SCHEMES = ["w8a8_dynamic", "w8a8_static", "w8a16", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"]
MX = {"mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"}
REF = ReferenceBackend()


def _k(name):
    return 1024 if name == "mxfp4_dual" else 96  # 96: an odd number of 32-blocks (padded scale pair)


def _case(name, dt, gen, *, n=24, mul_scale=False):
    k = _k(name)
    s = get_scheme(name)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[0, :32] *= 1e3  # a large block
    w[1] = 0.0  # an all-zero row
    kw = dict(act_min=-4.0, act_max=3.0) if name == "w8a8_static" else {}
    ts = s.quantize_weight(w, torch.randn(n, generator=gen), **kw)
    if name == "w8a16":  # the op takes antiquant_scale in the x dtype: store scales that survive that cast
        ts["weight_scale"] = ts["weight_scale"].to(dt).to(F32)
        ts["bias"] = ts["bias"].to(dt).to(F32)  # and a float16 bias for float16 x
    if mul_scale:
        ts["mul_scale"] = (torch.rand(k, generator=gen) + 0.5).to(dt).to(F32)  # representable in dt
    x = torch.randn(3, 5, k, generator=gen) * 2
    x[0, 0] = 0.0  # zero row
    x[0, 1, :7] = 1e4  # saturating outliers
    x[1, 2, 3] = 0.5 * 2.0 ** -14  # subnormal in fp16
    return s, ts, x.to(dt)


def _bytes(d):
    return {k: (v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v) for k, v in d.items()}


def _assert_close_ulp(y, yr, what):
    """MX / fp32-accumulation tolerance: 1 ulp of the output dtype or 1e-3 of the output magnitude."""
    y, yr = y.float(), yr.float()
    ulp = torch.finfo(y.dtype if y.dtype != F32 else yr.dtype).eps
    fin = torch.isfinite(yr)
    mag = float(yr[fin].abs().max()) if bool(fin.any()) else 0.0
    tol = torch.maximum(yr.abs() * 2 * 2.0 ** -8, torch.full_like(yr, 1e-3 * mag))
    ok = (y == yr) | (torch.isnan(y) & torch.isnan(yr)) | ((y - yr).abs() <= tol)
    assert bool(ok.all()), f"{what}: max diff {(y - yr)[fin].abs().max().item()} (eps {ulp})"


@pytest.mark.parametrize("dt", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("soc", ["A2", "A5"])
def test_activation_quantizer_byte_identical(soc, name, dt, gen):
    s, ts, x = _case(name, dt, gen, mul_scale=name != "w8a16")
    fallback = soc == "A2" and name in MX
    if fallback:  # A2/A3 MX: weight-only by default, so the quantizer its apply runs reports nothing
        plain = NpuBackend(soc, sim=True)
        assert plain.quantize_activation(plain.prepare(s, ts, dt), x) == {}
    be = NpuBackend(soc, sim=True, act_fake_quant=fallback)  # with fake-quant: the A5 quantizer's bytes
    p, pr = be.prepare(s, ts, dt, where="layer"), REF.prepare(s, ts, dt)
    qa, qr = _bytes(be.quantize_activation(p, x)), _bytes(REF.quantize_activation(pr, x))
    assert set(qa) == set(qr)
    for key in qr:
        assert qa[key].dtype == qr[key].dtype and torch.equal(qa[key], qr[key]), key


@pytest.mark.parametrize("dt", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", SCHEMES)
def test_a5_outputs_match_reference(name, dt, gen):
    s, ts, x = _case(name, dt, gen, mul_scale=name != "w8a16")
    be = NpuBackend("A5", sim=True)
    p, pr = be.prepare(s, ts, dt), REF.prepare(s, ts, dt)
    assert p.mode == "native"
    y, yr = be.apply(p, x), REF.apply(pr, x)
    assert y.shape == x.shape[:-1] + (24,) and y.dtype == dt
    if name in ("w8a8_dynamic", "w8a8_static", "w8a16"):
        assert torch.equal(y, yr)  # int8 paths are exact
    else:
        _assert_close_ulp(y, yr, name)
    # no bias
    _assert_close_ulp(be.apply(p, x, add_bias=False), REF.apply(pr, x, add_bias=False), name + " no bias")


@pytest.mark.parametrize("name", ["w8a8_dynamic", "w8a8_static", "w8a16"])
def test_a2_int8_outputs_identical(name, gen):
    s, ts, x = _case(name, BF16, gen)
    be = NpuBackend("A2", sim=True)
    assert torch.equal(be.apply(be.prepare(s, ts, BF16), x), REF.apply(REF.prepare(s, ts, BF16), x))


@pytest.mark.parametrize("dt", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"])
def test_a2_mx_fallback_is_dequantized_weight_math(name, dt, gen):
    s, ts, x = _case(name, dt, gen, mul_scale=True)
    be = NpuBackend("A2", sim=True)
    p = be.prepare(s, ts, dt)
    assert p.mode == "exact fallback"
    k = _k(name)
    w = s.dequantize_weight(ts)
    xs = apply_mul_scale(x.reshape(-1, k), ts["mul_scale"])
    if name == "mxfp4_dual":  # level 0 folded into a group scale rounded to the activation dtype
        vals = s.weight_values(ts, k)
        from omni_npu_quant.numerics.bits import pow2
        from omni_npu_quant.numerics.e8m0 import code_to_exponent

        g = pow2(code_to_exponent(ts["weight_scale"])) * 0.5 * s.weight_l0(ts).repeat_interleave(16, dim=-1)
        w = (vals * 2).reshape(24, -1, 32) * g.to(dt).to(F32).unsqueeze(-1)
        w = w.reshape(24, k)
        assert any("not bit-exact" in n for n in p.notes)
    bias = ts["bias"].to(F32 if dt == BF16 else FP16)
    expect = mx_matmul(xs.to(F32), w, bias).to(dt).reshape(3, 5, 24)
    y = be.apply(p, x)
    _assert_close_ulp(y, expect, name)


@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"])
def test_a2_fake_quant_follows_a5_semantics(name, gen):
    s, ts, x = _case(name, BF16, gen)
    y = NpuBackend("A2", sim=True, act_fake_quant=True)
    out = y.apply(y.prepare(s, ts, BF16), x)
    ref = REF.apply(REF.prepare(s, ts, BF16), x)
    rel = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
    assert rel < (2e-2 if name == "mxfp4_dual" else 5e-3), rel
    plain = NpuBackend("A2", sim=True).apply(NpuBackend("A2", sim=True).prepare(s, ts, BF16), x)
    assert not torch.equal(plain, out)  # the option really changes the activations


def test_fp16_fallback_out_of_range_scales_use_fp32(gen):
    s, ts, x = _case("mxfp4", FP16, gen)
    ts["weight_scale"][2, 0] = 127 - 40  # 2^-41: no fp16 group scale can hold it
    p = NpuBackend("A2", sim=True).prepare(s, ts, FP16)
    assert p.w_dense is not None and p.w_dense.dtype == F32
    assert any("fp32" in n for n in p.notes)


def test_per_group_w8a8_dynamic_falls_back_exactly(gen):
    s = get_scheme("w8a8_dynamic")
    w = torch.randint(-127, 128, (8, 128), generator=gen, dtype=torch.int32).to(torch.int8)
    ts = {"weight": w, "weight_scale": torch.rand(8, 4, generator=gen) + 0.01}
    x = torch.randn(4, 128, generator=gen).to(BF16)
    be = NpuBackend("A5", sim=True)
    p = be.prepare(s, ts, BF16)
    assert p.mode == "exact fallback"
    assert torch.equal(be.apply(p, x), REF.apply(REF.prepare(s, ts, BF16), x))


# ---- guards ---------------------------------------------------------------------------
def test_guard_last_dim(gen):
    s = get_scheme("w8a8_dynamic")
    big_k = {"weight": torch.zeros(1, 65536, dtype=torch.int8), "weight_scale": torch.ones(1, 1)}
    with pytest.raises(NpuPrepareError, match=r"layers.0.q_proj: .*K \(in_features\) = 65536 .*65535"):
        NpuBackend("A2", sim=True).prepare(s, big_k, BF16, where="layers.0.q_proj")
    big_n = {"weight": torch.zeros(65536, 1, dtype=torch.int8), "weight_scale": torch.ones(65536, 1)}
    with pytest.raises(NpuPrepareError, match="N .* 65535"):
        NpuBackend("A2", sim=True).prepare(s, big_n, BF16)


def test_guard_act_dtype_and_310p_and_no_npu(gen):
    s, ts, _ = _case("w8a8_dynamic", BF16, gen)
    with pytest.raises(NpuPrepareError, match="bfloat16/float16"):
        NpuBackend("A2", sim=True).prepare(s, ts, F32)
    be = NpuBackend(soc="310P")
    assert be.capability(s).mode == "unsupported"
    with pytest.raises(NpuPrepareError, match="not targeted"):
        be.prepare(s, ts, BF16)
    real = NpuBackend()  # no torch_npu on this machine
    assert real.capability(s).mode == "unsupported" and "npu-sim" in real.capability(s).reason


def test_guard_dual_k_multiple_of_512_and_odd_fp4_k(gen):
    s = get_scheme("mxfp4_dual")
    ts = s.quantize_weight(torch.randn(4, 1024, generator=gen))
    ts = {k: v[:, :] for k, v in ts.items()}
    bad = dict(ts, weight=ts["weight"][:, :384], weight_scale=ts["weight_scale"][:, :24],
               weight_dual_scale=ts["weight_dual_scale"][:, :2])  # K = 768 per rank
    with pytest.raises(SchemeValidationError, match="multiple of 512"):
        NpuBackend("A5", sim=True).prepare(s, bad, BF16)
    m = get_scheme("mxfp4")
    odd = m.quantize_weight(torch.randn(4, 95, generator=gen))
    with pytest.raises(SchemeValidationError, match="multiple of 32"):  # the MX K rule (whole E8M0 blocks)
        NpuBackend("A5", sim=True).prepare(m, odd, BF16, k=95)


def test_fp16_static_uses_int64_deq_scale(gen):
    s, ts, x = _case("w8a8_static", FP16, gen)
    p = NpuBackend("A2", sim=True).prepare(s, ts, FP16)
    assert p.deq.dtype == torch.int64
    assert NpuBackend("A2", sim=True).prepare(s, ts, BF16).deq.dtype == F32


def test_dual_smooth_scale_in_activation_dtype(gen):
    s, ts, x = _case("mxfp4_dual", FP16, gen, mul_scale=True)
    p = NpuBackend("A5", sim=True).prepare(s, ts, FP16)
    assert p.smooth.dtype == FP16  # CANN: smooth_scale dtype == input dtype (fp16 models work)
