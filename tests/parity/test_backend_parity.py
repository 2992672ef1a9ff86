"""Every backend present here against the reference, scheme by scheme, on fresh random inputs plus
edge cases (ties, saturation, subnormals, zeros, NaN/Inf, odd K) in bf16 / fp16 / fp32.

* activation quantizers: byte-identical to the reference (every backend, every scheme);
* int8 (E0) outputs: identical on CPU backends, within 1 output ulp on CUDA (epilogue order);
* MX / dual-scale (E1) outputs: within max(1e-3, eps(out dtype)) * max|ref| (docs/parity.md).
"""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.backends.base import FALLBACK, UNSUPPORTED
from omni_npu_quant.backends import ReferenceBackend
from omni_npu_quant.parity.backends import resolve_backend
from omni_npu_quant.parity.metrics import compare, compare_bytes
from omni_npu_quant.parity.runner import weight_only_linear
from omni_npu_quant.parity.source import LayerEntry
from omni_npu_quant.parity.thresholds import exactness, layer_failures, layer_semantics
from omni_npu_quant.schemes.registry import get_scheme

from conftest import OTHERS, PRESENT

SCHEMES = ("w8a8_dynamic", "w8a8_static", "w8a16", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# K per scheme: odd for int8, an odd number of 32-blocks for MX (the K rule needs whole blocks), 2 x 512 for dual
K_OF = {"w8a8_dynamic": 99, "w8a8_static": 99, "w8a16": 99, "mxfp8": 96, "mxfp4": 96, "w4a8_mxfp": 96,
        "mxfp4_dual": 1024}
N = 40
# per-device tolerance of E0 outputs, in output ulps (cuda_mirror.md section 1: epilogue order may differ)
E0_ULP = {"cpu": 0.0, "npu": 0.0, "cuda": 1.0}

REF = ReferenceBackend()


def _inputs(k: int, dtype: torch.dtype, gen: torch.Generator, *, nonfinite: bool = False) -> torch.Tensor:
    rows = [torch.randn(k, generator=gen) for _ in range(10)]
    out = torch.stack(rows)
    out[:, torch.randperm(k, generator=gen)[:3]] *= 30.0  # outlier channels
    big = float(torch.finfo(dtype).max) / 4 if dtype != torch.float32 else 1e30
    tiny = float(torch.finfo(dtype).smallest_normal) / 8  # subnormal in dtype
    edge = torch.zeros(8, k)
    edge[1] = 0.0  # all-zero row
    edge[2] = torch.arange(k) % 13 - 6 + 0.5  # halves: int8 / FP4 / FP8 rounding ties
    edge[2, 0] = 127.0
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])  # midpoints of E2M1 (amax 6 -> scale 1)
    edge[3] = ties.repeat(k // 8 + 1)[:k] * torch.where(torch.arange(k) % 3 == 0, -1.0, 1.0)
    edge[4] = torch.full((k,), big) * torch.where(torch.arange(k) % 2 == 0, -1.0, 1.0)  # saturation
    edge[5] = tiny * (torch.arange(k) % 7 + 1)  # subnormals
    edge[6] = torch.randn(k, generator=gen) * 1e-3
    edge[6, k // 2] = 1e3  # one huge value: the rest of its block flushes
    edge[7] = torch.linspace(-448.0, 448.0, k)  # FP8 range, many E4M3 ties
    x = torch.cat([out, edge])
    if nonfinite:
        x[0, 1] = float("nan")
        x[1, 2] = float("inf")
        x[2, 3] = float("-inf")
    return x.to(dtype)


def _layer(scheme_name: str, dtype: torch.dtype, gen: torch.Generator, *, smooth: bool = False):
    sch = get_scheme(scheme_name)
    k = K_OF[scheme_name]
    w = (torch.randn(N, k, generator=gen) / k ** 0.5)
    w[3] = 0.0  # an all-zero weight row
    bias = torch.randn(N, generator=gen) * 0.1
    x = _inputs(k, dtype, gen)
    calib = {}
    if scheme_name == "w8a8_static":
        xf = x.float()[:10]  # calibrate on the ordinary rows; the edge rows then saturate
        calib = {"act_min": float(xf.min()), "act_max": float(xf.max())}
    t = sch.quantize_weight(w.to(dtype), bias, **calib)
    if smooth:
        t["mul_scale"] = (torch.rand(k, generator=gen) * 1.5 + 0.25).to(dtype)
    return sch, t, x, k


def _prep(name: str, sch, t, dtype, k):
    st = resolve_backend(name)
    assert st.available, st.reason
    cap = st.backend.capability(sch)
    if cap.mode == UNSUPPORTED:
        return st, None
    dev = st.device
    td = {a: v.to(dev) for a, v in t.items()}
    if name.startswith("npu") and dtype == torch.float32:
        # NPU quantized kernels take bf16/fp16 activations: a clear refusal, reported by parity as "refused"
        with pytest.raises(ValueError, match="float32"):
            st.backend.prepare(sch, td, dtype, k=k, where=f"test.{sch.name}")
        return st, None
    return st, st.backend.prepare(sch, td, dtype, k=k, where=f"test.{sch.name}")


def test_candidates_present_on_this_machine():
    """The NPU emulator runs on any CPU: A2 and A5 must be present; CUDA wherever a GPU is."""
    for n in ("reference", "npu-sim:A2", "npu-sim:A5"):
        assert n in PRESENT, resolve_backend(n).reason
    if torch.cuda.is_available():
        assert "cuda" in PRESENT, resolve_backend("cuda").reason


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("scheme_name", SCHEMES)
@pytest.mark.parametrize("backend", OTHERS)
def test_quantizer_bytes_and_outputs(backend, scheme_name, dtype, gen):
    sch, t, x, k = _layer(scheme_name, dtype, gen, smooth=(dtype == torch.bfloat16))
    st, p = _prep(backend, sch, t, dtype, k)
    if p is None:
        reason = st.backend.capability(sch).reason
        assert reason, f"{backend} refuses {scheme_name} without a reason"
        return  # unsupported / refused: checked above, reported by parity as such
    pr = REF.prepare(sch, t, dtype, k=k)
    xd = x.to(st.device)
    q = {a: v.cpu() for a, v in st.backend.quantize_activation(p, xd).items()}
    qr = REF.quantize_activation(pr, x)
    if not q:  # weight-only semantics (W8A16; MX on A2/A3): the quantizer its apply runs produces nothing
        assert sch.weight_only or (p.mode == FALLBACK and qr), (backend, scheme_name)
        qb = None
    else:
        qb = compare_bytes(q, qr)
        assert qb["identical"], f"{backend} {scheme_name} quantizer differs: {qb['keys']}"
    y = st.backend.apply(p, xd).cpu()
    yr = REF.apply(pr, x)
    assert y.dtype == yr.dtype == dtype and y.shape == yr.shape
    m = compare(y, yr)
    res = {"status": "ok", "vs_reference": m, "quant": qb}
    if p.mode == FALLBACK:  # e.g. MX on A2/A3: must follow the reference or the exact weight-only oracle
        res["vs_weight_only"] = compare(y, weight_only_linear(LayerEntry("t", sch, t, k=k), x, dtype))
    res["semantics"] = layer_semantics(scheme_name, res, dtype)
    if exactness(scheme_name) == "E0" and res["semantics"] == "reference":
        tol = E0_ULP.get(st.device.type, 0.0)
        assert m["max_ulp"] <= tol, f"{backend} {scheme_name}: {m}"
    else:
        assert layer_failures("strict", scheme_name, res, dtype, is_reference=False) == [], res
    if p.mode != FALLBACK:
        assert res["semantics"] == "reference"
    assert m["new_nonfinite"] == 0


@pytest.mark.parametrize("scheme_name", SCHEMES)
@pytest.mark.parametrize("backend", OTHERS)
def test_quantizer_nonfinite_inputs(backend, scheme_name, gen):
    dtype = torch.bfloat16
    sch, t, _, k = _layer(scheme_name, dtype, gen)
    x = _inputs(k, dtype, gen, nonfinite=True)
    st, p = _prep(backend, sch, t, dtype, k)
    if p is None:
        return
    pr = REF.prepare(sch, t, dtype, k=k)
    q = {a: v.cpu() for a, v in st.backend.quantize_activation(p, x.to(st.device)).items()}
    if not q:
        assert sch.weight_only or p.mode == FALLBACK
        return
    qb = compare_bytes(q, REF.quantize_activation(pr, x))
    assert qb["identical"], f"{backend} {scheme_name} quantizer differs on NaN/Inf rows: {qb['keys']}"


@pytest.mark.parametrize("backend", OTHERS)
def test_three_d_inputs_and_no_bias(backend, gen):
    """(B, T, K) activations and add_bias=False go through the same path as 2-D ones."""
    for scheme_name in ("w8a8_dynamic", "mxfp4"):
        sch, t, x, k = _layer(scheme_name, torch.bfloat16, gen)
        st, p = _prep(backend, sch, t, torch.bfloat16, k)
        if p is None:
            continue
        pr = REF.prepare(sch, t, torch.bfloat16, k=k)
        x3 = x[:16].reshape(2, 8, k)
        y = st.backend.apply(p, x3.to(st.device), add_bias=False).cpu()
        yr = REF.apply(pr, x3, add_bias=False)
        assert y.shape == (2, 8, N)
        if p.mode == FALLBACK:
            yr = weight_only_linear(LayerEntry("t", sch, t, k=k), x3, torch.bfloat16, add_bias=False)
        assert compare(y, yr)["normwise"] <= torch.finfo(torch.bfloat16).eps
