"""Calibrated dual-scale mul_scale must beat mul_scale = 1 on the model output, measured through the
runtime (``load_quantized``) on inputs the calibration never saw."""
from __future__ import annotations

import math

import torch

from omni_npu_quant.checkpoint import load_checkpoint, validate_checkpoint
from omni_npu_quant.integrations.torch import load_quantized
from omni_npu_quant.models import build_tiny, tiny_inputs
from omni_npu_quant.schemes.registry import get_scheme


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _runtime_error(kind: str, ckpt, layers=None, seeds=(101, 102, 103)) -> float:
    kw = {} if layers is None else ({"layers": layers} if kind == "llama" else {"blocks": layers})
    ref_model = build_tiny(kind, seed=0, **kw)
    q_model = load_quantized(build_tiny(kind, seed=0, **kw), ckpt, backend="reference")
    num = den = 0.0
    with torch.no_grad():
        for s in seeds:
            x = tiny_inputs(kind, batch=1, seq=64, seed=s, model=ref_model)
            y_ref, y_q = ref_model(x).double(), q_model(x).double()
            num += float(((y_q - y_ref) ** 2).sum())
            den += float((y_ref ** 2).sum())
    return math.sqrt(num / den)


def _check_margin(name, cal, ident, kind, layers=None):
    e_cal = _runtime_error(kind, cal, layers)
    e_id = _runtime_error(kind, ident, layers)
    print(f"\n{name}: model output rel-L2 vs float: mul_scale=1 {e_id:.4f}, calibrated {e_cal:.4f} "
          f"({100 * (1 - e_cal / e_id):.1f} % lower)")
    assert e_cal <= 0.9 * e_id, (e_cal, e_id)


def test_llama_dual_calibration_beats_identity(llama_dual):
    cal, rep, ident, _ = llama_dual
    _check_margin("tiny-llama dual-scale", cal, ident, "llama", layers=1)
    # the report's own measurement agrees in direction and is recorded
    me = rep["model_error"]
    assert me["calibrated"] < me["identity"]


def test_dit_dual_calibration_beats_identity(dit_dual):
    cal, rep, ident, _ = dit_dual
    _check_margin("tiny-dit dual-scale", cal, ident, "dit")
    assert rep["model_error"]["calibrated"] < rep["model_error"]["identity"]


def test_layer_errors_before_after(llama_dual):
    _, rep, _, rep0 = llama_dual
    for row in rep["layers"]:
        assert row["err_after"] <= row["err_before"]
        assert 0.0 < row["err_after"] < 0.5
    # most groups with an input outlier gain more than 10 %: q/k/v and gate/up read the normed input
    gains = {r["name"]: 1 - r["err_after"] / r["err_before"] for r in rep["layers"]}
    assert gains["model.layers.0.self_attn.q_proj"] > 0.1
    assert gains["model.layers.0.mlp.gate_proj"] > 0.1
    # --no-smooth stores no mul_scale and reports before == after
    assert all(not r["mul_scale"] and r["err_after"] == r["err_before"] for r in rep0["layers"])


def test_checkpoint_layout_and_fused_mul_scale(llama_dual):
    cal, rep, ident, _ = llama_dual
    assert [p for p in validate_checkpoint(cal) if getattr(p, "severity", "error") == "error"] == []
    ck = load_checkpoint(cal)
    desc = ck.description
    names = [r["name"] for r in rep["layers"]]
    for n in names:
        assert desc[f"{n}.linear.weight"] == "W4A4_MXFP4_DUALSCALE"
        assert desc[f"{n}.linear.weight_dual_scale"] == "W4A4_MXFP4_DUALSCALE"
        assert desc[f"{n}.div.mul_scale"] == "FLOAT"
        assert f"{n}.weight" not in desc
    assert desc["lm_head.weight"] == "FLOAT"
    assert desc["model_quant_type"] == "W4A4_MXFP4_DUALSCALE" and desc["group_size"] == 32
    meta = desc["metadata"]
    assert meta["producer"] == "omni_npu_quant.calibrate" and len(meta["recipe_hash"]) == 64
    assert meta["calibration"]["recipe"]["smooth"]["scale_min"] == 1e-5
    # fused groups share one mul_scale, bit for bit; mul_scale is exactly representable in bf16
    p = "model.layers.0."
    qkv = [ck.layers[p + f"self_attn.{x}_proj"].tensors["mul_scale"] for x in "qkv"]
    gu = [ck.layers[p + f"mlp.{x}_proj"].tensors["mul_scale"] for x in ("gate", "up")]
    for group in (qkv, gu):
        assert group[0].dtype == torch.float32 and group[0].shape == (512,)
        for t in group[1:]:
            assert torch.equal(t, group[0])
        assert torch.equal(group[0].to(torch.bfloat16).float(), group[0])
        assert bool((group[0] > 0).all()) and bool(torch.isfinite(group[0]).all())
    assert not torch.equal(qkv[0], gu[0])  # different inputs, different statistics
    # the stored weight is W' = W / mul_scale: dequantized * mul_scale reconstructs W to FP4 accuracy
    model = build_tiny("llama", seed=0, layers=1)
    scheme = get_scheme("mxfp4_dual")
    for n in names:
        e = ck.layers[n]
        w = dict(model.named_modules())[n].weight.detach().float()
        w_hat = scheme.dequantize_weight(e.tensors) * e.tensors["mul_scale"]
        assert _rel(w_hat, w) < 0.2, n


def test_report_files(llama_dual):
    cal, rep, _, _ = llama_dual
    md = (cal / "calibration_report.md").read_text()
    assert "| `model.layers.0.self_attn.q_proj` |" in md and "Kept float" in md and "`lm_head`" in md
    import json

    assert json.loads((cal / "calibration_report.json").read_text()) == json.loads(json.dumps(rep))
    assert not (cal.parent / (cal.name + ".calib-work")).exists()  # work dir removed on success


def test_warns_when_calibration_does_not_improve(tmp_path, monkeypatch, capsys):
    """A calibration whose model output error does not go down says so (stderr and the report)."""
    from omni_npu_quant.calibration import evaluate

    from .conftest import run_calib

    errs = iter([0.20, 0.25])  # identity, then calibrated: worse
    monkeypatch.setattr(evaluate, "model_error", lambda *a, **k: next(errs))
    rep = run_calib(tmp_path / "worse", model="tiny-llama", model_layers=1, scheme="w8a8_dynamic")
    assert rep["model_error"]["improved"] is False
    assert "calibration did not improve the model output error" in capsys.readouterr().err
    assert "did not improve" in (tmp_path / "worse" / "calibration_report.md").read_text()
