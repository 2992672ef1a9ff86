"""W4A16 scheme (storage, validation, RTN quantization) and its kernels on every CPU-reachable backend:
reference (exact fp32), the NPU kernel on the A2/A3/A5 emulator (native int4 through
npu_convert_weight_to_int4pack + npu_weight_quant_batchmatmul), the CUDA kernel in Triton's interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omni_npu_quant.backends.registry import get_backend
from omni_npu_quant.kernels import KernelPrepareError
from omni_npu_quant.schemes import SchemeValidationError, get_scheme
from omni_npu_quant.schemes.registry import LABEL_TO_SCHEME

BF16, FP16, F32 = torch.bfloat16, torch.float16, torch.float32
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _layer(n, k, gs, sym, *, perm=False, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    ts = get_scheme("w4a16", group_size=gs, symmetric=sym).quantize_weight(w, b)
    if perm:
        p = torch.randperm(k, generator=gen)
        ts["input_perm"] = p.to(torch.int32)
    return ts


# ---- scheme ---------------------------------------------------------------------------------------
def test_registered_by_label_and_options_checked():
    assert LABEL_TO_SCHEME["W4A16"] == "w4a16"
    s = get_scheme("W4A16", group_size=64, symmetric=False)
    assert (s.name, s.weight_bits, s.weight_only, s.k_multiple) == ("w4a16", 4, True, 8)
    with pytest.raises(ValueError, match="group_size must be one of"):
        get_scheme("w4a16", group_size=48)
    with pytest.raises(ValueError, match="symmetric must be a bool"):
        get_scheme("w4a16", symmetric="yes")


@pytest.mark.parametrize("gs", [0, 32, 64, 128])
@pytest.mark.parametrize("sym", [True, False])
def test_quantize_weight_rtn(gs, sym):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(48, 256, generator=gen)
    s = get_scheme("w4a16", group_size=gs, symmetric=sym)
    ts = s.quantize_weight(w)
    g = 1 if gs == 0 else 256 // gs
    assert ts["weight"].dtype == torch.int8 and ts["weight_scale"].shape == (48, g)
    assert int(ts["weight"].min()) >= -8 and int(ts["weight"].max()) <= 7
    off = ts["weight_offset"]
    assert torch.equal(off, off.round()) and (bool((off == 0).all()) if sym else bool((off != 0).any()))
    s.validate(ts)
    deq = s.dequantize_weight(ts)
    # RTN: each element within half a step of its group's scale
    step = ts["weight_scale"].repeat_interleave(256 // g, dim=1)
    assert bool(((deq - w).abs() <= step / 2 + 1e-6).all())
    assert float((deq - w).norm() / w.norm()) < (0.16 if gs == 0 else 0.12)  # int4 RTN on Gaussian weights


def test_validation_names_the_tensor():
    s = get_scheme("w4a16")
    ts = _layer(16, 64, 32, True)
    bad = dict(ts, weight=ts["weight"].clone())
    bad["weight"][0, 0] = 8
    with pytest.raises(SchemeValidationError, match=r"L0: tensor 'weight' holds values in \[.*, 8\]"):
        s.validate(bad, where="L0")
    with pytest.raises(SchemeValidationError, match="'weight_scale' has non-finite"):
        s.validate(dict(ts, weight_scale=ts["weight_scale"] * float("inf")))
    with pytest.raises(SchemeValidationError, match="does not divide K=64"):
        s.validate(dict(ts, weight_scale=torch.ones(16, 3), weight_offset=torch.zeros(16, 3)))
    with pytest.raises(SchemeValidationError, match="'input_perm' must be a permutation"):
        s.validate(dict(ts, input_perm=torch.zeros(64, dtype=torch.int32)))
    with pytest.raises(SchemeValidationError, match="'weight' has dtype torch.int32"):
        s.validate(dict(ts, weight=ts["weight"].to(torch.int32)))
    with pytest.raises(SchemeValidationError, match="K a multiple of 8"):
        s.validate({"weight": torch.zeros(4, 12, dtype=torch.int8), "weight_scale": torch.ones(4, 1)})


def test_dequantize_undoes_input_perm():
    ts = _layer(8, 64, 32, False, perm=True)
    s = get_scheme("w4a16")
    plain = {k: v for k, v in ts.items() if k != "input_perm"}
    w_stored = s.dequantize_weight(plain)
    w = s.dequantize_weight(ts)
    assert torch.equal(w[:, ts["input_perm"].long()], w_stored)


# ---- kernels ---------------------------------------------------------------------------------------
def _golden_npu(x, ts, dtype):
    """CANN golden of the int4 weight-only matmul: w = rnd(rnd(q - offset) * rnd(scale)) in x's dtype."""
    q = ts["weight"].float()
    n, k = q.shape
    g = ts["weight_scale"].shape[1]
    rows = lambda t: t.float().reshape(n, g).repeat_interleave(k // g, dim=1)  # noqa: E731
    r = lambda t: t.to(dtype).float()  # noqa: E731
    w = q if "weight_offset" not in ts else r(q - rows(r(ts["weight_offset"])))
    w = r(w * rows(r(ts["weight_scale"])))
    xs = x if "input_perm" not in ts else x[:, ts["input_perm"].long()]
    out = xs.float() @ w.t()
    if "bias" in ts:
        out = out + ts["bias"].to(F32 if dtype == BF16 else FP16).float()
    return out.to(dtype)


CASES = [(0, True, False), (32, False, False), (64, True, True), (128, False, True)]


@pytest.mark.parametrize("gs,sym,perm", CASES)
@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_backends_agree(gs, sym, perm, dtype):
    ts = _layer(64, 256, gs, sym, perm=perm, seed=gs)
    s = get_scheme("w4a16")
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(3)).to(dtype)
    exact = x.float() @ s.dequantize_weight(ts).t() + ts["bias"]
    ref = get_backend("reference")
    r = ref.apply(ref.prepare(s, ts, F32), x.float())
    assert torch.allclose(r, exact, rtol=1e-5, atol=1e-4)
    for be in ("npu-sim:A2", "npu-sim:A3", "npu-sim:A5"):
        b = get_backend(be)
        p = b.prepare(s, ts, dtype, where="layer")
        assert p.kernel_name == "npu.w4a16" and p.mode == "native"
        o = b.apply(p, x)
        g = _golden_npu(x, ts, dtype)
        eps = torch.finfo(dtype).eps
        assert float((o.float() - g.float()).abs().max()) <= eps * float(g.float().abs().max()), be
        assert float((o.float() - exact).norm() / exact.norm()) < 4e-3, be


def test_npu_refusals_have_reasons():
    s = get_scheme("w4a16")
    b = get_backend("npu-sim:A2")
    with pytest.raises(KernelPrepareError, match="packs the .K, N. weight along N"):
        b.prepare(s, _layer(60, 64, 32, True), BF16, where="odd_n")
    ts = {"weight": torch.zeros(16, 96, dtype=torch.int8), "weight_scale": torch.ones(16, 2)}  # group 48
    with pytest.raises(KernelPrepareError, match="antiquant_group_size a multiple of 32"):
        b.prepare(s, ts, BF16, where="g48")
    # the reference kernel takes what the NPU kernel refuses
    r = get_backend("reference")
    assert r.prepare(s, ts, BF16).kernel_name == "reference.w4a16"


def test_capability_rows():
    from omni_npu_quant.backends.capability import capability_row

    for fam in ("A2", "A3", "A5"):
        row = capability_row("w4a16", fam)
        assert (row.kernel, row.mode) == ("npu.w4a16", "native"), row
    assert capability_row("w4a16", "sm90").kernel == "cuda.w4a16"
    assert capability_row("w4a16", "cpu").kernel == "reference.w4a16"
    row = capability_row("w4a16", "310P")
    assert row.mode == "unsupported" and "310P" in row.reason  # as for W8A16: not targeted


INTERP = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.schemes import get_scheme
    from omni_npu_quant.kernels.cuda.w4a16 import twin_w4a16_gemm, pack_uint4_along_k, unpack_uint4_along_k
    be = CudaBackend("cpu")
    s = get_scheme("w4a16")
    gen = torch.Generator().manual_seed(5)
    for n, k, gs, sym, perm, m in [(96, 256, 0, True, False, 1), (64, 256, 32, False, True, 33),
                                   (40, 128, 64, True, False, 5), (64, 512, 128, False, False, 17)]:
        w = torch.randn(n, k, generator=gen)
        ts = get_scheme("w4a16", group_size=gs, symmetric=sym).quantize_weight(w, torch.randn(n, generator=gen))
        if perm:
            ts["input_perm"] = torch.randperm(k, generator=gen).to(torch.int32)
        assert torch.equal(unpack_uint4_along_k(pack_uint4_along_k(ts["weight"])), ts["weight"].int())
        x = torch.randn(m, k, generator=gen).half()
        p = be.prepare(s, ts, torch.float16)
        assert p.kernel_name == "cuda.w4a16", p.kernel_name
        o = be.apply(p, x)
        xs = x if not perm else x[:, ts["input_perm"].long()]
        t = twin_w4a16_gemm(xs, p.qweight, p.scale, p.zp, p.group_k, p.bias)
        exact = x.float() @ s.dequantize_weight(ts).t() + ts["bias"]
        tol = 2 * torch.finfo(torch.float16).eps * float(t.float().abs().max())
        assert float((o.float() - t.float()).abs().max()) <= tol, (n, k, gs, m)
        assert float((o.float() - exact).norm() / exact.norm()) < 2e-3
    print("ok")
""")


def test_cuda_kernel_in_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-c", INTERP], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]


def test_online_quantize_write_read_roundtrip(tmp_path):
    """quantize_ (online RTN) -> AscendV1 writer -> reader -> load_quantized: same tensors, same outputs."""
    from omni_npu_quant.checkpoint import load_checkpoint, write_ascendv1
    from omni_npu_quant.integrations.torch.api import load_quantized, quantize_, quantized_tensor_sets
    from omni_npu_quant.models.tiny import build_tiny

    m = build_tiny("llama", seed=0)
    quantize_(m, {"scheme": "w4a16", "scheme_options": {"group_size": 64, "symmetric": False}}, backend="npu-sim:A2")
    sets = quantized_tensor_sets(m)
    assert {lab for lab, _ in sets.values()} == {"W4A16"}
    d = write_ascendv1(tmp_path / "ck", sets, {})
    ck = load_checkpoint(d)
    assert ck.description["group_size"] == 64 and sorted(ck.layers) == sorted(sets)
    for p, (_, t) in sets.items():
        assert all(torch.equal(ck.layers[p].tensors[s].float(), v.float()) for s, v in t.items()), p
    m2 = load_quantized(build_tiny("llama", seed=1), d, backend="npu-sim:A2", strict=False)
    mods, mods2 = dict(m.named_modules()), dict(m2.named_modules())
    x = torch.randn(3, 2, mods["model.layers.0.mlp.down_proj"].in_features,
                    generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    for p in sets:
        if mods[p].in_features == x.shape[-1]:
            assert torch.equal(mods[p](x), mods2[p](x)), p
