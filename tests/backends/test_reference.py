"""Reference backend: each scheme's forward against an independent straightforward computation.

The independent side decodes stored tensors with its own tables (FP4 nibble table, 2**(c-127),
int8 widening) and multiplies in float64; activations are quantized with the numerics rule (the
rule under test in tests/numerics).  int8 paths must be bit-exact; MX paths agree to fp32
accumulation error.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_npu_quant.backends import ReferenceBackend
from omni_npu_quant.numerics import int8 as I
from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.schemes import SchemeValidationError, get_scheme

FP4_TABLE = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float64)


def np_fp4_weight(packed: torch.Tensor, k: int) -> np.ndarray:
    p = packed.numpy()
    lo, hi = FP4_TABLE[p & 0xF], FP4_TABLE[p >> 4]
    return np.stack([lo, hi], -1).reshape(p.shape[0], -1)[:, :k]


def np_e8m0(codes: torch.Tensor, k: int) -> np.ndarray:
    s = np.ldexp(1.0, codes.numpy().astype(np.int64) - 127)
    return np.repeat(s, 32, axis=-1)[:, :k]


def _w(n, k, gen):
    return torch.randn(n, k, generator=gen) / k ** 0.5


@pytest.fixture
def be():
    return ReferenceBackend()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", ["mxfp4", "mxfp8", "w4a8_mxfp"])
def test_mx_forward_matches_float64(be, gen, name, dtype):
    n, k = 24, 96  # 3 E8M0 blocks: an odd block count (the pair layout pads one)
    s = get_scheme(name)
    w = _w(n, k, gen)
    bias = torch.randn(n, generator=gen)
    t = s.quantize_weight(w, bias)
    x = torch.randn(5, k, generator=gen).to(dtype)
    y = be.apply(be.prepare(s, t, dtype), x)
    assert y.dtype == dtype and y.shape == (5, n)
    # independent: weight decode in float64
    if s.weight_fmt.bits == 4:
        wd = np_fp4_weight(t["weight"], k) * np_e8m0(t["weight_scale"], k)
    else:
        wd = t["weight"].view(torch.uint8).numpy().view(__import__("ml_dtypes").float8_e4m3fn).astype(np.float64) \
            * np_e8m0(t["weight_scale"], k)
    r = s.quantize_activation(x)
    xd = MX.mx_dequantize(r.values, r.exponents).double().numpy()
    ref = xd @ wd.T + bias.double().numpy()
    got = y.double().numpy()
    tol = {torch.float32: 1e-5, torch.bfloat16: 2 ** -8, torch.float16: 2 ** -10}[dtype]
    assert np.allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    # the quantized layer is close to the float layer (sanity of the whole path)
    yf = x.double() @ w.double().T + bias.double()
    rel = (y.double() - yf).norm() / yf.norm()
    assert rel < (0.2 if s.weight_fmt.bits == 4 else 0.06)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mxfp4_dual_forward_matches_float64(be, gen, dtype):
    n, k = 16, 1024
    s = get_scheme("mxfp4_dual")
    w = _w(n, k, gen)
    t = s.quantize_weight(w)
    t["mul_scale"] = (torch.rand(k, generator=gen) + 0.5).to(dtype)
    x = torch.randn(3, k, generator=gen).to(dtype)
    y = be.apply(be.prepare(s, t, dtype), x)
    l0w = t["weight_dual_scale"].double().numpy()[:, :, 0]  # (N, K/512)
    wd = np_fp4_weight(t["weight"], k) * np_e8m0(t["weight_scale"], k) * np.repeat(l0w, 512, axis=-1)
    r = s.quantize_activation(x, t["mul_scale"])
    xd = MX.mx_dequantize(r.values, r.exponents).double().numpy() * np.repeat(r.l0.double().numpy(), 512, -1)
    ref = xd @ wd.T
    tol = 1e-5 if dtype == torch.float32 else 2 ** -8
    assert np.allclose(y.double().numpy(), ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_w8a8_dynamic_bit_exact(be, gen, dtype):
    n, k = 12, 77
    s = get_scheme("w8a8_dynamic")
    w = _w(n, k, gen)
    bias = torch.randn(n, generator=gen)
    t = s.quantize_weight(w, bias)
    x = torch.randn(4, k, generator=gen).to(dtype)
    x[1] = 0  # all-zero row -> scale 0 -> output = bias
    y = be.apply(be.prepare(s, t, dtype), x)
    q, sx = I.dynamic_quant_int8(x)
    acc = q.numpy().astype(np.int64) @ t["weight"].numpy().astype(np.int64).T  # exact int64
    # epilogue in the NPU order: fp32(acc * w_scale) * x_scale + bias, each step in fp32
    ref = (torch.from_numpy(acc).to(torch.float32) * t["weight_scale"].reshape(1, -1)) * sx.unsqueeze(-1) + bias
    assert torch.equal(y, ref.to(dtype))
    assert torch.equal(y[1], bias.to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("deq_dtype", [torch.float32, torch.int64])
def test_w8a8_static_bit_exact(be, gen, dtype, deq_dtype):
    n, k = 10, 64
    s = get_scheme("w8a8_static")
    w = _w(n, k, gen)
    bias = torch.randn(n, generator=gen) * 0.1
    x = (torch.randn(6, k, generator=gen) * 1.5).to(dtype)
    x[0, 0] = 40.0  # outside the calibrated range: saturates to 127
    xs = x[1:].float()
    t = s.quantize_weight(w, bias, act_min=float(xs.min()), act_max=float(xs.max()), deq_scale_dtype=deq_dtype)
    y = be.apply(be.prepare(s, t, dtype), x)
    # independent: reciprocal and offset in the activation dtype, then round-half-even int8
    recip = (1.0 / t["input_scale"].float()).to(dtype).float()
    off = t["input_offset"].float().to(dtype).float()
    v = x.float() * recip + off
    xq = torch.round(v).clamp(-128, 127).to(torch.int64)
    acc = xq @ t["weight"].to(torch.int64).T + t["quant_bias"].to(torch.int64)
    deq = I.int64_deq_scale_to_fp32(t["deq_scale"]) if deq_dtype == torch.int64 else t["deq_scale"]
    if dtype == torch.float16:  # the NPU reads FP19 for fp16 outputs
        deq = I.fp19_truncate(deq)
    ref = (acc.to(torch.float32) * deq).to(dtype)
    assert torch.equal(y, ref)
    assert int(xq[0, 0]) == 127
    # and close to the float layer on the calibrated rows
    yf = x[1:].double() @ w.double().T + bias.double()
    assert (y[1:].double() - yf).norm() / yf.norm() < 0.05


def test_w8a16_forward(be, gen):
    s = get_scheme("w8a16")
    w = _w(8, 40, gen)
    t = s.quantize_weight(w)
    x = torch.randn(3, 40, generator=gen)
    y = be.apply(be.prepare(s, t, torch.float32), x)
    wd = t["weight"].double() * t["weight_scale"].double()
    assert torch.allclose(y.double(), x.double() @ wd.T, rtol=1e-5, atol=1e-5)


def test_activation_bytes_layouts(be, gen):
    x = torch.randn(3, 96, generator=gen).to(torch.bfloat16)
    for name, (q_shape, s_shape) in {"mxfp4": ((3, 48), (3, 2, 2)), "mxfp8": ((3, 96), (3, 2, 2)),
                                     "w8a8_dynamic": ((3, 96), (3,))}.items():
        s = get_scheme(name)
        p = be.prepare(s, s.quantize_weight(_w(4, 96, gen)), torch.bfloat16)
        out = be.quantize_activation(p, x)
        assert tuple(out["x_q"].shape) == q_shape and tuple(out["x_scale"].shape) == s_shape, name
    s = get_scheme("mxfp4_dual")
    p = be.prepare(s, s.quantize_weight(_w(4, 1024, gen)), torch.bfloat16)
    out = be.quantize_activation(p, torch.randn(3, 1024, generator=gen).to(torch.bfloat16))
    assert out["x_q"].shape == (3, 512) and out["x_l0"].shape == (3, 2) and out["x_scale"].shape == (3, 16, 2)


# ------------------------------------------------------------------ validation names the tensor
def test_validation_errors_name_the_tensor(be, gen):
    s = get_scheme("mxfp4")
    t = s.quantize_weight(_w(4, 64, gen))
    bad = dict(t, weight_scale=t["weight_scale"][:, :1])
    with pytest.raises(SchemeValidationError, match=r"layers\.0\.q_proj.*'weight_scale'.*shape"):
        be.prepare(s, bad, torch.bfloat16, where="layers.0.q_proj")
    with pytest.raises(SchemeValidationError, match="missing tensor 'weight_scale'"):
        be.prepare(s, {"weight": t["weight"]}, torch.bfloat16)
    nan = dict(t, weight_scale=t["weight_scale"].clone())
    nan["weight_scale"][0, 0] = 255
    with pytest.raises(SchemeValidationError, match="code 255"):
        be.prepare(s, nan, torch.bfloat16)
    with pytest.raises(SchemeValidationError, match="unexpected tensor"):
        be.prepare(s, dict(t, foo=torch.zeros(1)), torch.bfloat16)
    d = get_scheme("mxfp4_dual")
    td = d.quantize_weight(_w(4, 1024, gen))
    with pytest.raises(SchemeValidationError, match="'weight_dual_scale'"):
        be.prepare(d, dict(td, weight_dual_scale=td["weight_dual_scale"].double()), torch.bfloat16)
    st_ = get_scheme("w8a8_static")
    ts = st_.quantize_weight(_w(4, 32, gen), act_min=-1.0, act_max=1.0)
    with pytest.raises(SchemeValidationError, match="'input_scale'"):
        be.prepare(st_, dict(ts, input_scale=torch.tensor([0.0])), torch.bfloat16)
    dyn = get_scheme("w8a8_dynamic")
    td = dyn.quantize_weight(_w(4, 32, gen))
    with pytest.raises(SchemeValidationError, match="'weight'.*dtype"):
        be.prepare(dyn, dict(td, weight=td["weight"].float()), torch.bfloat16)


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8", "w4a8_mxfp", "mxfp4_dual"])
def test_mx_k_rule_refuses_partial_blocks(be, gen, name):
    """One K rule per scheme (K % 32 for MX, K % 512 for dual-scale), the same for every consumer."""
    s = get_scheme(name)
    k = 1024 + 32 if s.dual_level else 100
    assert s.shape_problem(8, k) and s.shape_problem(8, 1024) is None
    t = s.quantize_weight(_w(8, k, gen))  # the numerics still quantize partial blocks
    with pytest.raises(SchemeValidationError, match=f"multiple of {s.k_multiple}"):
        be.prepare(s, t, torch.bfloat16, where="layers.0.q_proj")
