"""Resume after an interruption gives the same bytes; every main scheme calibrates, loads and serves."""
from __future__ import annotations

import json

import pytest
import torch

from omni_npu_quant.calibration import CalibrationInterrupted, work_dir_for
from omni_npu_quant.calibration import pipeline as P
from omni_npu_quant.checkpoint import load_checkpoint
from omni_npu_quant.integrations.torch import load_quantized
from omni_npu_quant.models import build_tiny, tiny_inputs
from omni_npu_quant.numerics.int8 import static_act_params

from .conftest import run_calib

DIT1 = dict(model="tiny-dit", model_layers=1, alphas=(0.3, 0.6), clamps=(None,))


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_resume_is_byte_identical(tmp_path, monkeypatch):
    full = tmp_path / "full"
    run_calib(full, **DIT1)

    out = tmp_path / "resumed"
    with pytest.raises(CalibrationInterrupted):
        run_calib(out, fail_after_groups=2, **DIT1)
    assert not out.exists()
    work = work_dir_for(out)
    assert len(list((work / "groups").glob("*.json"))) == 2
    calls = []
    real = P.search_group
    monkeypatch.setattr(P, "search_group", lambda *a, **k: calls.append(a[1].key) or real(*a, **k))
    run_calib(out, resume=True, **DIT1)
    n_groups = len(json.loads((full / "calibration_report.json").read_text())["groups"])
    assert len(calls) == n_groups - 2  # finished groups were not redone
    assert "blocks.0.attn.to_q" not in calls
    assert _files(out) == _files(full)
    assert not work.exists()


def test_resume_refuses_other_recipe(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(CalibrationInterrupted):
        run_calib(out, fail_after_groups=1, **DIT1)
    with pytest.raises(ValueError, match="different recipe"):
        run_calib(out, resume=True, **{**DIT1, "alphas": (0.5,)})


def test_out_exists_needs_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(ValueError, match="overwrite"):
        run_calib(out, **DIT1)
    assert (out / "x").read_text() == "keep"


@pytest.mark.parametrize("scheme,label", [("mxfp4", "W4A4_MXFP4"), ("mxfp8", "W8A8_MXFP8"),
                                          ("w8a8_dynamic", "W8A8_DYNAMIC"), ("w8a8_static", "W8A8")])
def test_every_scheme(tmp_path, scheme, label):
    out = tmp_path / scheme
    rep = run_calib(out, scheme=scheme, **DIT1)
    ck = load_checkpoint(out)
    assert ck.description["model_quant_type"] == label
    kept = {k["name"] for k in rep["kept_float"]}
    if scheme.startswith("mx"):
        assert kept == {"proj_in"}  # K = 16 is not a whole MX block
    else:
        assert kept == set()
    for row in rep["layers"]:
        assert row["err_after"] <= row["err_before"]
        e = ck.layers[row["name"]]
        assert e.label == label
        assert ("mul_scale" in e.tensors) == row["mul_scale"]
    if scheme == "w8a8_static":
        # q/k/v share one static input range; it is the smoothed calibration range
        t = [ck.layers[f"blocks.0.attn.to_{x}"].tensors for x in "qkv"]
        for x in t[1:]:
            assert torch.equal(x["input_scale"], t[0]["input_scale"])
            assert torch.equal(x["input_offset"], t[0]["input_offset"])
        assert "quant_bias" in t[0] and "deq_scale" in t[0]
    # served by the runtime; the output is close to the float model
    ref = build_tiny("dit", seed=0, blocks=1)
    q = load_quantized(build_tiny("dit", seed=0, blocks=1), out, backend="reference")
    x = tiny_inputs("dit", batch=1, seq=64, seed=7, model=ref)
    with torch.no_grad():
        y_ref, y_q = ref(x).double(), q(x).double()
    rel = float((y_q - y_ref).norm() / y_ref.norm())
    bound = {"mxfp8": 0.25, "w8a8_dynamic": 0.1, "w8a8_static": 0.15}.get(scheme, 0.8)
    print(f"\n{scheme}: model rel-L2 {rel:.4f} (report: {rep['model_error']})")
    assert rel < bound


def test_static_range_matches_stats(tmp_path):
    out = tmp_path / "s"
    run_calib(out, scheme="w8a8_static", smooth=False, evaluate=False, **DIT1)
    ck = load_checkpoint(out)
    t = ck.layers["blocks.0.attn.to_q"].tensors
    # recompute the to_q input range independently with a hook on the float model
    from omni_npu_quant.calibration.sources import load_batches, load_model

    lm = load_model("tiny-dit", layers=1)
    calls = load_batches(None, lm, seq_len=64, num_samples=4, seed=1)
    seen = []
    h = lm.model.blocks[0].attn.to_q.register_forward_pre_hook(lambda m, a: seen.append(a[0].float()))
    with torch.no_grad():
        for args, kw in calls:
            lm.model(*args, **kw)
    h.remove()
    xs = torch.cat([s.reshape(-1, 512) for s in seen])
    dtype = next(lm.model.parameters()).dtype  # scales are computed in the model dtype, as msModelSlim does
    scale, offset = static_act_params(float(xs.min()), float(xs.max()), dtype)
    assert float(t["input_scale"].reshape(-1)[0]) == scale
    assert float(t["input_offset"].reshape(-1)[0]) == offset
