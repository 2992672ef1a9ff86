"""SVD low-rank schemes and kernels: registry labels, validation, quantize/dequantize, every backend against the
reference (npu-sim:A5 / A2 / A3, the CUDA branch kernel in Triton's interpreter), the capability table."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omni_npu_quant.backends.registry import get_backend
from omni_npu_quant.parity.metrics import ulp
from omni_npu_quant.schemes import SchemeValidationError
from omni_npu_quant.schemes.registry import LABEL_TO_SCHEME, SCHEMES, get_scheme
from omni_npu_quant.schemes.svd_base import SVDScheme, lowrank_branch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MS_SVD = {"W4A4_MXFP4_SVD": "mxfp4_svd", "W8A8_SVD_DYNAMIC": "w8a8_dynamic_svd", "W8A8_MXFP8_SVD": "mxfp8_svd",
          "W4A8_MXFP_SVD": "w4a8_mxfp_svd", "W4A4_MXFP4_DUALSCALE_SVD": "mxfp4_dual_svd", "W8A8_SVD": "w8a8_static_svd"}
ONLINE_SVD = ("mxfp4_svd", "w8a8_dynamic_svd", "mxfp8_svd", "w4a8_mxfp_svd", "mxfp4_dual_svd", "svdq_int4",
              "svdq_nvfp4")


def saver_label(label: str) -> str:
    """msModelSlim 26.1.0 AscendV1Saver.on_svd_wrapper's rule (docs/svd.md section 1)."""
    return label.replace("_DYNAMIC", "_SVD_DYNAMIC") if label.endswith("_DYNAMIC") else label + "_SVD"


def lowrank_weight(n, k, rank, seed=0):
    """A weight with a strong rank-``rank`` part and outlier input channels (what SVD is for)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, rank, generator=g) @ torch.randn(rank, k, generator=g) * 0.3
    w += torch.randn(n, k, generator=g) * 0.05
    w[:, :: max(1, k // 5)] *= 6.0
    return w


def test_registry_carries_the_svd_labels():
    for lab, name in MS_SVD.items():
        assert LABEL_TO_SCHEME[lab] == name
        cls = SCHEMES[name]
        assert issubclass(cls, SVDScheme) and cls.label == saver_label(cls.residual_cls.label)
        for fact in ("k_multiple", "weight_bits", "needs_calibration", "bias_in_quant_bias", "per_group_scales"):
            assert getattr(cls, fact) == getattr(cls.residual_cls, fact), (name, fact)
    assert SCHEMES["w8a8_static_svd"].needs_calibration and not SCHEMES["mxfp4_svd"].needs_calibration
    assert LABEL_TO_SCHEME["NUNCHAKU_SVDQ_W4A4_INT4"] == "svdq_int4"
    assert get_scheme("mxfp4_svd", rank=8, act_round_mode="rint").act_round_mode == "rint"
    with pytest.raises(AttributeError):
        get_scheme("mxfp4_svd").weight_fmt  # noqa: B018 - only the residual's options read through


def test_validation_errors_name_the_tensor():
    s = get_scheme("mxfp4_svd", rank=8)
    t = s.quantize_weight(lowrank_weight(64, 128, 8))
    assert s.validate(t) == (64, 128)
    for mutate, msg in [
        (lambda d: d.pop("svd_lowrank_l1"), "missing tensor 'svd_lowrank_l1'"),
        (lambda d: d.__setitem__("svd_lowrank_l2", torch.zeros(64, 4, dtype=torch.bfloat16)),
         "'svd_lowrank_l2' has shape"),
        (lambda d: d.__setitem__("svd_lowrank_l1", torch.zeros(8, 128, dtype=torch.int8)),
         "'svd_lowrank_l1' has dtype"),
        (lambda d: d["svd_lowrank_l2"].__setitem__((0, 0), float("nan")), "'svd_lowrank_l2' holds non-finite"),
        (lambda d: d.__setitem__("weight_scale", torch.full_like(d["weight_scale"], 255)), "E8M0 code 255"),
    ]:
        d = {k: v.clone() for k, v in t.items()}
        mutate(d)
        with pytest.raises(SchemeValidationError, match=msg):
            s.validate(d, where="blk.fc")
    big = {k: v for k, v in t.items()}
    big["svd_lowrank_l1"] = torch.zeros(65, 128, dtype=torch.bfloat16)
    big["svd_lowrank_l2"] = torch.zeros(64, 65, dtype=torch.bfloat16)
    with pytest.raises(SchemeValidationError, match="rank 65 must be in 1..min"):
        s.validate(big)
    assert "needs min(N, K) >= 64" in get_scheme("mxfp4_svd", rank=64).shape_problem(32, 128)
    assert get_scheme("mxfp4_svd").shape_problem(16, 128) is None  # rank from the tensors: no rule before them
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        get_scheme("mxfp4_svd", rank=0)
    with pytest.raises(ValueError, match="rank 100 exceeds min"):
        get_scheme("mxfp4_svd", rank=100).quantize_weight(torch.randn(64, 96))


@pytest.mark.parametrize("name", ONLINE_SVD)
def test_svd_beats_plain_residual_on_a_lowrank_weight(name):
    s = get_scheme(name, rank=8)
    k = 512 if "dual" in name else 256
    w = lowrank_weight(128, k, 8)
    t = s.quantize_weight(w, torch.randn(128))
    s.validate(t)
    assert t["svd_lowrank_l1"].dtype == torch.bfloat16 and t["svd_lowrank_l1"].shape == (8, k)
    err_svd = (s.dequantize_weight(t) - w).norm() / w.norm()
    plain = s.residual
    err_plain = (plain.dequantize_weight(plain.quantize_weight(w)) - w).norm() / w.norm()
    assert err_svd < 0.7 * err_plain, (name, float(err_svd), float(err_plain))


def _bf16_ulp(t):
    return ulp(t, torch.bfloat16).float()


@pytest.mark.parametrize("name", ["mxfp4_svd", "w8a8_dynamic_svd", "mxfp8_svd", "w4a8_mxfp_svd", "mxfp4_dual_svd"])
def test_npu_sim_against_reference(name):
    s = get_scheme(name, rank=16)
    k = 512 if "dual" in name else 192
    w = lowrank_weight(96, k, 16, seed=1)
    t = s.quantize_weight(w, torch.randn(96) * 0.1)
    x = (torch.randn(2, 5, k) * 2).bfloat16()
    ref_be = get_backend("reference")
    pr = ref_be.prepare(s, t, torch.bfloat16, where="fc")
    y_ref = ref_be.apply(pr, x).float()
    res_ref = pr.residual.kernel.apply(pr.residual, x.reshape(-1, k)).float().reshape(y_ref.shape)
    branch = lowrank_branch(x.reshape(-1, k), t["svd_lowrank_l1"], t["svd_lowrank_l2"], torch.bfloat16)

    a5 = get_backend("npu-sim:A5")
    p5 = a5.prepare(s, t, torch.bfloat16, where="fc")
    assert p5.kernel.name == "npu.svd" and p5.residual.kernel.name in ("npu.mx_a5", "npu.mx_dual_a5",
                                                                        "npu.int8_dynamic")
    # the activation quantizer the forward runs is the reference's, byte for byte
    qa, qr = a5.quantize_activation(p5, x), ref_be.quantize_activation(pr, x)
    assert qa.keys() == qr.keys() and all(torch.equal(qa[n].view(torch.uint8) if qa[n].dtype.itemsize == 1 else qa[n],
                                                      qr[n].view(torch.uint8) if qr[n].dtype.itemsize == 1 else qr[n])
                                          for n in qa)
    # the branch is the reference branch exactly; the only extra error is the quant matmul's rounding of the residual
    assert torch.equal(p5.kernel.branch(p5, x.reshape(-1, k)), branch)
    y5 = a5.apply(p5, x).float()
    bound = 0.5 * _bf16_ulp(res_ref) + 1.0 * _bf16_ulp(y_ref) + 1e-30
    assert bool(((y5 - y_ref).abs() <= bound).all()), float(((y5 - y_ref).abs() / bound).max())

    # A2 / A3: the documented fallback.  MX residuals: exact weights, activations unquantized (weight-only); int8
    # residuals run natively on A2 too.
    for soc in ("A2", "A3"):
        be = get_backend(f"npu-sim:{soc}")
        p = be.prepare(s, t, torch.bfloat16, where="fc")
        y = be.apply(p, x).float()
        if name == "w8a8_dynamic_svd":
            assert bool(((y - y_ref).abs() <= bound).all())
            continue
        assert p.mode == "exact fallback" and p.residual.kernel.name == "npu.mx_fallback"
        assert not p.residual.kernel.fake_quant
        wres = s.residual.dequantize_weight(s.split(t)[0])
        res_o = x.reshape(-1, k).float() @ wres.t() + t["bias"]
        oracle = res_o + branch  # the residual comes back rounded to bf16 (cancellation against the branch)
        tol = (_bf16_ulp(res_o) + 2 * _bf16_ulp(oracle)).reshape(y.shape)
        if "dual" in name:  # level-0 folded into the bf16 group scale: relative weight error <= 2^-8
            tol = tol + 2.0 ** -8 * (x.reshape(-1, k).float().abs() @ wres.abs().t()).reshape(y.shape)
        assert bool(((y - oracle.reshape(y.shape)).abs() <= tol).all()), name


def test_capability_table_rows():
    from omni_npu_quant.backends.capability import capability_row

    for name in MS_SVD.values():
        for fam, kern in (("A5", "npu.svd"), ("A2", "npu.svd"), ("sm90", "cuda.svd"), ("sm80", "cuda.svd"),
                          ("cpu", "reference.svd")):
            row = capability_row(name, fam)
            assert row.kernel == kern and row.mode in ("native", "exact fallback"), (name, fam, row)
            assert "low-rank branch" in row.reason
    assert capability_row("mxfp4_svd", "A5").mode == "native"
    assert capability_row("mxfp4_svd", "A2").mode == "exact fallback"
    assert capability_row("svdq_nvfp4", "A5").mode == "exact fallback"
    assert capability_row("mxfp4_svd", "310P").mode == "unsupported"


INTERP = textwrap.dedent("""
    from omni_npu_quant.kernels.cuda.jit import interpret
    interpret.enable()
    import torch
    from omni_npu_quant.kernels.cuda.jit.svd_lowrank import lowrank_add
    from omni_npu_quant.schemes.svd_base import lowrank_branch
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.backends.registry import get_backend
    from omni_npu_quant.schemes.registry import get_scheme
    fails = []
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float16, torch.float32):
        for m, k, r, n in ((37, 200, 24, 70), (1, 64, 16, 128), (80, 96, 40, 65)):
            x = torch.randn(m, k, generator=g).to(dt)
            l1 = (torch.randn(r, k, generator=g) * 0.1).to(dt)
            l2 = (torch.randn(n, r, generator=g) * 0.1).to(dt)
            res = torch.randn(m, n, generator=g)
            br = lowrank_branch(x, l1, l2, dt)
            d = (lowrank_add(x, l1, l2, res) - (res + br)).abs().max().item()
            if d > 2.0 ** -10 * br.abs().max().item():
                fails.append((str(dt), m, k, r, n, d))
    try:
        lowrank_add(torch.zeros(2, 8), torch.zeros(3, 9), torch.zeros(4, 3), torch.zeros(2, 4))
        fails.append('no shape error')
    except ValueError as e:
        assert 'do not fit' in str(e)
    s = get_scheme('w8a8_dynamic_svd', rank=16)
    w = torch.randn(64, 128, generator=g)
    t = s.quantize_weight(w, torch.randn(64, generator=g))
    x = torch.randn(6, 128, generator=g).half()
    be = CudaBackend(device='cpu')
    p = be.prepare(s, t, torch.float16)
    if (p.kernel.name, p.residual.kernel.name) != ('cuda.svd', 'cuda.int8_dynamic'):
        fails.append(('kernels', p.kernel.name, p.residual.kernel.name))
    ref = get_backend('reference')
    y, yr = be.apply(p, x).float(), ref.apply(ref.prepare(s, t, torch.float16), x).float()
    if (y - yr).abs().max().item() > 2 * 2.0 ** -10 * yr.abs().max().item():
        fails.append(('cuda.svd vs reference', (y - yr).abs().max().item()))
    print('FAILS', fails)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed in this environment")
def test_cuda_branch_kernel_in_triton_interpreter():
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", INTERP], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILS []" in r.stdout, r.stdout[-3000:]


def test_real_minilm_layer_svd_beats_plain_mxfp4():
    """all-MiniLM-L6-v2's first FFN output layer on its real input: the rank-32 branch lowers the W4A4 output error."""
    from omni_npu_quant.cli.demo import load_minilm

    model, tok, _ = load_minilm(torch.bfloat16)
    lin = model.encoder.layer[0].output.dense  # (384, 1536)
    seen = {}
    h = lin.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0].detach()))
    with torch.no_grad():
        model(**tok(["The quick brown fox jumps over the lazy dog.", "Low-rank branches absorb outliers."],
                    padding=True, return_tensors="pt"))
    h.remove()
    x = seen["x"].reshape(-1, lin.in_features)
    ref = x.float() @ lin.weight.float().t() + lin.bias.float()
    be = get_backend("reference")
    err = {}
    for name, opts in (("mxfp4", {}), ("mxfp4_svd", {"rank": 32})):
        s = get_scheme(name, **opts)
        y = be.apply(be.prepare(s, s.quantize_weight(lin.weight.float(), lin.bias.float()), torch.bfloat16), x)
        err[name] = ((y.float() - ref).norm() / ref.norm()).item()
    assert err["mxfp4_svd"] < 0.9 * err["mxfp4"], err


def test_our_writer_round_trips_svd_layers(tmp_path):
    """Our writer labels the factors with the layer's label (msModelSlim: FLOAT); the reader takes both forms."""
    import json

    from omni_npu_quant.checkpoint import load_checkpoint
    from omni_npu_quant.checkpoint.writer import write_ascendv1

    a = get_scheme("mxfp4_svd", rank=8).quantize_weight(lowrank_weight(64, 128, 8), torch.randn(64))
    b = get_scheme("w8a8_dynamic_svd", rank=8).quantize_weight(lowrank_weight(64, 128, 8, seed=2))
    b["mul_scale"] = torch.rand(128) + 0.5  # smoothed: the Linear's tensors move under b.fc.linear.*
    out = write_ascendv1(tmp_path / "ck", {"a.fc": ("W4A4_MXFP4_SVD", a), "b.fc": ("W8A8_SVD_DYNAMIC", b)}, {})
    desc = json.loads((out / "quant_model_description.json").read_text())
    assert desc["a.fc.svd_lowrank_l1"] == "W4A4_MXFP4_SVD" and "b.fc.linear.svd_lowrank_l2" in desc
    ck = load_checkpoint(out)
    for prefix, want in (("a.fc", a), ("b.fc", b)):
        got = ck.layers[prefix].tensors
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[k].to(v.dtype), v) for k, v in want.items()), prefix
