"""Calibration from a captured denoise loop, and every CLI on diffusers directories (Wan2.2 two-expert layout)."""
from __future__ import annotations

import json

import pytest
import torch

from omni_npu_quant.calibration.capture import CaptureInputs
from omni_npu_quant.calibration.sources import _saved_inputs
from omni_npu_quant.cli.main import main
from omni_npu_quant.integrations.torch import QuantLinear, load_quantized
from omni_npu_quant.models.dit import build_small_dit, call_output, example_call

from .conftest import CLASSES, FAST_CALIB



def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_capture_keeps_bounded_evenly_spaced_calls(tmp_path):
    model = build_small_dit("FluxTransformer2DModel")
    args, kwargs = example_call(model)
    cap = CaptureInputs({"transformer": model}, max_samples=4, spill_dir=tmp_path / "spill", spill_bytes=0)
    with cap, torch.no_grad():
        for i in range(11):
            kwargs["timestep"] = torch.full((1,), 1.0 - i / 11).to(torch.bfloat16)
            model(*args, **kwargs)
    s = cap.summary()["transformer"]
    assert s["calls_seen"] == 11 and s["kept_call_indices"] == [0, 4, 8] and s["stride"] == 4
    assert len(list((tmp_path / "spill" / "transformer").glob("*.safetensors"))) == 3  # dropped ones deleted
    paths = cap.save(tmp_path / "cap")
    calls = _saved_inputs(paths["transformer"], torch.bfloat16)
    assert len(calls) == 3 and calls[1][1]["return_dict"] is False
    assert float(calls[1][1]["timestep"]) == pytest.approx(1.0 - 4 / 11, abs=1e-2)
    with torch.no_grad():  # a saved call replays to the same output
        kw = dict(kwargs, timestep=calls[2][1]["timestep"])
        assert torch.equal(call_output(model(*calls[2][0], **calls[2][1])), call_output(model(*args, **kw)))
    with pytest.raises(ValueError, match="never called"):
        CaptureInputs({"t": model}).save(tmp_path / "none")


@pytest.mark.parametrize("cls", [c for c in CLASSES if c != "WanTransformer3DModel"])
def test_calibrate_each_class_from_a_captured_denoise_loop(cls, tmp_path):
    """A real flow-matching scheduler loop around each class (Wan runs its whole pipeline below)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from omni_npu_quant.calibration import CalibOptions, calibrate

    model = build_small_dit(cls, seed=5)
    model.save_pretrained(str(tmp_path / "m"))
    args, kwargs = example_call(model, seed=6)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(6)
    key = "hidden_states" if "hidden_states" in kwargs else None
    lat = kwargs[key] if key else torch.stack(args[0])
    with CaptureInputs(model, max_samples=4) as cap, torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((1,), float(t) / 1000).to(torch.bfloat16)
            if key:
                out = call_output(model(**dict(kwargs, hidden_states=lat, timestep=tt)))
            else:
                out = call_output(model(list(lat.unbind(0)), tt, args[2], **kwargs))
            lat = sched.step(out.float(), t, lat.float()).prev_sample.to(torch.bfloat16)
    paths = cap.save(tmp_path / "cap")
    assert len(cap.summary()["transformer"]["timesteps"]) >= 3
    rep = calibrate(CalibOptions(out=str(tmp_path / "ck"), model=str(tmp_path / "m"), scheme="w8a8_static",
                                 calib=str(paths["transformer"]), num_samples=0, **FAST_CALIB))
    assert rep["layers"] and any(k["reason"].startswith("default float") for k in rep["kept_float"])
    fresh = build_small_dit(cls, seed=77)
    load_quantized(fresh, tmp_path / "ck", backend="reference")
    assert sum(isinstance(m, QuantLinear) for m in fresh.modules()) == len(rep["layers"])
    with torch.no_grad():
        assert torch.isfinite(call_output(fresh(*args, **kwargs)).float()).all()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("a red cat on the house\nthe blue car under a tree\n")
    return p


@pytest.fixture(scope="module")
def calibrated(wan_pipeline_dir, prompts, tmp_path_factory):
    """calibrate --pipeline on the small Wan2.2 pipeline, for w8a8_static and mxfp4_dual."""
    root = tmp_path_factory.mktemp("calpipe")
    out = {}
    for scheme in ("w8a8_static", "mxfp4_dual"):
        argv = ["calibrate", "--pipeline", str(wan_pipeline_dir), "--prompts", str(prompts), "--steps", "4",
                "--height", "32", "--width", "32", "--num-frames", "5", "--guidance-scale", "3.0",
                "--max-sequence-length", "16", "--scheme", scheme, "--num-samples", "4", "--max-rows", "64",
                "--alphas", "0.5", "--clamps", "none", "--no-progress", "--out", str(root / scheme)]
        assert main(argv) == 0
        out[scheme] = root / scheme
    return out


@pytest.mark.parametrize("scheme", ["w8a8_static", "mxfp4_dual"])
def test_calibrate_pipeline_writes_the_two_expert_layout(calibrated, scheme, wan_pipeline_dir):
    out = calibrated[scheme]
    assert (out / "model_index.json").is_file()
    summary = json.loads((out / "capture.json").read_text())
    assert set(summary) == {"transformer", "transformer_2"}
    # boundary_ratio 0.5: the high-noise expert takes the early steps, the low-noise expert the late ones
    assert min(summary["transformer"]["timesteps"]) > max(summary["transformer_2"]["timesteps"])
    for sub in ("transformer", "transformer_2"):
        rep = json.loads((out / sub / "calibration_report.json").read_text())
        assert rep["scheme"] == scheme and rep["layers"]
        kept = {k["name"] for k in rep["kept_float"]}
        assert {"proj_out", "condition_embedder.time_proj"} <= kept
        assert json.loads((out / sub / "config.json").read_text())["_class_name"] == "WanTransformer3DModel"


@pytest.mark.parametrize("scheme", ["w8a8_static", "mxfp4_dual"])
def test_calibrated_pipeline_accepted_by_inspect_load_quantized_parity(calibrated, scheme, wan_pipeline_dir,
                                                                       tmp_path, capsys):
    out = calibrated[scheme]
    rc, text = _run(["inspect", str(out), "--json"], capsys)
    info = json.loads(text[text.index("{"):])
    assert set(info["transformers"]) == {"transformer", "transformer_2"}
    errors = {sub: [p["message"] for p in i["problems"] if p["severity"] == "error"]
              for sub, i in info["transformers"].items()}
    # Wan attn2: to_q reads the image tokens, to_k / to_v the text tokens, so their calibrated scales differ;
    # the reader validates the shared-input groups calibrate recorded, not sibling names
    assert rc == 0 and not any(errors.values()), errors
    assert all(i["valid"] for i in info["transformers"].values())
    import diffusers

    # parity end to end on one expert per scheme (both experts' checkpoints are validated above)
    for sub in (("transformer",) if scheme == "mxfp4_dual" else ("transformer_2",)):
        rc, text = _run(["parity", "--checkpoint", str(out / sub), "--backends", "reference",
                         "--repeat", "1", "--no-plot", "--out", str(tmp_path / f"par-{sub}")], capsys)
        assert rc == 0, text
        rep = json.loads((tmp_path / f"par-{sub}" / "parity.json").read_text())
        assert rep["end_to_end"] and rep["source"]["inputs"]["shape"][1] == 16  # a model run, not layer-only
    pipe = diffusers.WanPipeline.from_pretrained(str(wan_pipeline_dir), torch_dtype=torch.bfloat16)
    load_quantized(pipe, out, backend="reference")  # the pipeline layout onto the pipeline's two experts
    for sub in ("transformer", "transformer_2"):
        t = getattr(pipe, sub)
        assert isinstance(t.blocks[0].attn2.to_q, QuantLinear) and isinstance(t.blocks[1].ffn.net[2], QuantLinear)
        assert t.blocks[0].attn2.to_q.scheme.name == scheme
    if scheme != "mxfp4_dual":
        return
    with torch.no_grad():  # and the quantized pipeline still denoises
        lat = pipe(prompt="a red cat", height=32, width=32, num_frames=5, num_inference_steps=2,
                   guidance_scale=3.0, output_type="latent", max_sequence_length=16).frames
    assert torch.isfinite(lat.float()).all()


def test_quantize_inspect_parity_take_diffusers_directories(wan_pipeline_dir, dit_dirs, tmp_path, capsys):
    rc, text = _run(["quantize", "--model", str(wan_pipeline_dir), "--scheme", "mxfp8", "--out",
                     str(tmp_path / "q")], capsys)
    assert rc == 0, text
    assert "== transformer_2" in text and "default float" in text
    rc, text = _run(["inspect", str(tmp_path / "q")], capsys)
    assert rc == 0 and text.count("validation: OK") == 2, text
    rc, text = _run(["quantize", "--model", str(dit_dirs["FluxTransformer2DModel"]), "--scheme", "mxfp4",
                     "--num-bf16-fallback-layers", "1", "--plan"], capsys)
    assert rc == 0 and "num_bf16_fallback_layers=1" in text, text
    rc, text = _run(["quantize", "--model", str(dit_dirs["ZImageTransformer2DModel"]), "--scheme", "w4a8_mxfp",
                     "--out", str(tmp_path / "z")], capsys)
    assert rc == 0, text
    rc, text = _run(["inspect", str(tmp_path / "z")], capsys)
    assert rc == 0 and "validation: OK" in text
    assert json.loads((tmp_path / "z" / "config.json").read_text())["_class_name"] == "ZImageTransformer2DModel"
    rc, text = _run(["parity", "--model", str(wan_pipeline_dir / "transformer"), "--scheme", "mxfp4",
                     "--backends", "reference", "--repeat", "1", "--no-plot", "--out", str(tmp_path / "p")], capsys)
    assert rc == 0, text
    rep = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert "WanTransformer3DModel" in rep["source"]["description"] and rep["end_to_end"]
    assert not any(L["name"].startswith("condition_embedder") for L in rep["layers"])
    rc, text = _run(["parity", "--checkpoint", str(tmp_path / "q"), "--backends", "reference", "--out",
                     str(tmp_path / "p2")], capsys)
    assert rc == 2 and "transformer" in text and "pass --checkpoint" in text
    rc, text = _run(["calibrate", "--model", str(wan_pipeline_dir), "--out", str(tmp_path / "c")], capsys)
    assert rc == 2 and "--pipeline" in text
    with pytest.raises(SystemExit, match="is a quantized checkpoint"):
        main(["quantize", "--model", str(tmp_path / "z"), "--scheme", "mxfp8", "--plan"])


def test_parity_replays_a_captured_call(dit_dirs, tmp_path, capsys):
    """parity --model DIR --inputs FILE: the saved-inputs format of a capture drives the model run."""
    d = dit_dirs["QwenImageTransformer2DModel"]
    from omni_npu_quant.models.loading import load_dir

    model = load_dir(d).model
    args, kwargs = example_call(model, seed=9, tokens=36)
    with CaptureInputs(model, max_samples=2) as cap, torch.no_grad():
        model(*args, **kwargs)
    path = cap.save(tmp_path / "cap")["transformer"]
    rc, text = _run(["parity", "--model", str(d), "--scheme", "w8a8_dynamic", "--inputs", str(path),
                     "--backends", "reference", "--repeat", "1", "--no-plot", "--out", str(tmp_path / "p")], capsys)
    assert rc == 0, text
    rep = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert rep["source"]["inputs"]["shape"] == [1, 36, 64]  # the captured latents, not the built-in example
    rc, text = _run(["parity", "--model", str(d), "--scheme", "w8a8_dynamic", "--inputs", str(tmp_path / "x.pt"),
                     "--backends", "reference", "--out", str(tmp_path / "p2")], capsys)
    assert rc == 2 and "saved call inputs" in text


def test_calibrate_wan_with_quantized_embedders_finishes(dit_dirs, tmp_path):
    """calibrate w8a8_static died with a bare StopIteration after the search (the evaluation swap had no
    parameters for Wan's next(time_embedder.parameters()))."""
    from omni_npu_quant.calibration import CalibOptions, calibrate

    rep = calibrate(CalibOptions(out=str(tmp_path / "ck"), model=str(dit_dirs["WanTransformer3DModel"]),
                                 scheme="w8a8_static", default_ignores=False, num_samples=2, **FAST_CALIB))
    names = {r["name"] for r in rep["layers"]}
    assert "condition_embedder.time_embedder.linear_1" in names
    assert rep["model_error"]["calibrated"] < 0.05
