"""Trajectory parity on small random FLUX.1 and Wan2.2 pipelines: every scheme on reference, A2, A5 (and cuda)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from omni_npu_quant.cli.main import main
from omni_npu_quant.parity.trajectory import (THRESHOLDS, TrajectoryRunner, frames_uint8, image_metrics,
                                              run_trajectory, verdict, write_report)
from omni_npu_quant.schemes.registry import scheme_names

from .conftest import request

BACKENDS = ["reference", "npu-sim:A2", "npu-sim:A5", "cuda"]
# "every scheme" as the demo and the docs mean it (Scheme.in_main_job); the others: test_other_schemes_run
MAIN = scheme_names(main=True)
OTHERS = [s for s in scheme_names() if s not in MAIN and not s.endswith("_svd") and not s.startswith("svdq")]


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_metrics_follow_vllm_omni_definitions():
    """uint8 conversion (clip, x255, round), psnr_db with peak 255, relative_l2 against the reference's norm."""
    class Out:
        images = np.array([[[[0.5, 1.2, -0.1]] * 2] * 2], dtype=np.float32)  # (1, 2, 2, 3), out of range clipped

    u = frames_uint8(Out())
    assert u.dtype == np.uint8 and u.shape == (1, 2, 2, 3) and u[0, 0, 0].tolist() == [128, 255, 0]

    class Video:
        frames = np.zeros((1, 5, 4, 4, 3), dtype=np.float32)
    assert frames_uint8(Video()).shape == (5, 4, 4, 3)

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    cand = np.clip(ref.astype(int) + rng.integers(-3, 4, size=ref.shape), 0, 255).astype(np.uint8)
    m = image_metrics(ref, cand)
    a = m["all_frames_metrics"]
    d = cand.astype(np.float64) - ref.astype(np.float64)
    mse = float((d ** 2).mean())
    assert a["mse"] == pytest.approx(mse)
    assert a["psnr_db"] == pytest.approx(20 * math.log10(255) - 10 * math.log10(mse))
    assert a["mae"] == pytest.approx(float(np.abs(d).mean()))
    assert a["relative_l2"] == pytest.approx(float(np.linalg.norm(d) / np.linalg.norm(ref.astype(np.float64))))
    r, c = ref.reshape(-1).astype(np.float64), cand.reshape(-1).astype(np.float64)
    assert a["cosine_similarity"] == pytest.approx(float(r @ c / (np.linalg.norm(r) * np.linalg.norm(c))))
    assert m["mid_frame_index"] == 1 and m["frame0_metrics"]["psnr_db"] != m["mid_frame_metrics"]["psnr_db"]
    assert image_metrics(ref, ref)["all_frames_metrics"]["psnr_db"] == math.inf
    # tiers: 24.9 dB passes smoke, fails strict
    px = {"psnr_db": 24.9, "mae": 5.0, "cosine_similarity": 0.999, "relative_l2": 0.05, "new_nonfinite": 0}
    v = verdict(px)
    assert v["smoke"]["pass"] and not v["strict"]["pass"] and "psnr_db 24.90 < 25.0" in v["strict"]["failures"][0]
    assert THRESHOLDS["smoke"]["mae_max"] == 12.0 and THRESHOLDS["strict"]["relative_l2_max"] == 0.08
    with pytest.raises(ValueError, match="shapes differ"):
        image_metrics(ref, cand[:2])


def _check_report(out, steps, n_frames):
    data = json.loads((out / "trajectory.json").read_text())
    md = (out / "trajectory.md").read_text()
    png = (out / "trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    seen = {(r["scheme"], r["backend"]) for r in ok}
    for scheme in MAIN:
        for be in ("reference", "npu-sim:A2", "npu-sim:A5"):
            assert (scheme, be) in seen, (scheme, be, [(r["scheme"], r["backend"], r.get("reason")) for r in
                                                       data["rows"] if r["status"] != "ok"])
            assert f"| {scheme} | {be} |" in md
    if not torch.cuda.is_available():
        assert {"scheme": None, "backend": "cuda", "status": "unavailable", "reason": "cuda: no CUDA device"} in \
            data["rows"] and "cuda: no CUDA device" in md
    assert data["frames_shape"][0] == n_frames  # decoded frames (Wan's small VAE: one per latent frame)
    for r in ok:
        px = r["output_metrics"]["all_frames_metrics"]
        assert r["output_metrics"]["num_frames"] == n_frames
        assert len(r["per_step"]) == steps and r["per_step"][-1]["relative_l2"] == r["final_latent_metrics"][
            "relative_l2"]
        assert 0 < r["final_latent_metrics"]["relative_l2"] < 0.2, r  # quantized, and still the same trajectory
        assert math.isfinite(px["psnr_db"]) and r["verdict"]["smoke"]["pass"], r
        assert r["generation_time_s"] > 0 and r["peak_memory_mb"] > 0 and r["memory_kind"] == "process_peak_rss"
    by = {(r["scheme"], r["backend"]): r for r in ok}
    for scheme in MAIN:  # the NPU emulators agree with the reference on the whole trajectory
        ref_psnr = by[(scheme, "reference")]["output_metrics"]["all_frames_metrics"]["psnr_db"]
        a5 = by[(scheme, "npu-sim:A5")]["output_metrics"]["all_frames_metrics"]["psnr_db"]
        assert abs(ref_psnr - a5) < 1.0, (scheme, ref_psnr, a5)
    assert by[("mxfp4", "npu-sim:A2")]["mode"] != "native"  # MX on A2: the exact weight-only fallback, said so
    return data


@pytest.mark.slow
def test_cli_report_flux_every_scheme(flux_dir, tmp_path, capsys):
    r = request("flux")
    rc, text = _run(["trajectory", "--pipeline", str(flux_dir), "--steps", str(r.steps), "--height", "32", "--width",
                     "32", "--guidance-scale", "3.5", "--max-sequence-length", "16", "--backends", ",".join(BACKENDS),
                     "--fail-on", "smoke", "--out", str(tmp_path / "t")], capsys)
    assert rc == 0, text
    data = json.loads((tmp_path / "t" / "trajectory.json").read_text())
    assert data["pipeline_class"] == "FluxPipeline" and data["transformers"] == ["transformer"]
    _check_report(tmp_path / "t", r.steps, 1)
    assert "w8a8_static@npu-sim:A5: psnr_db" in text


@pytest.mark.slow
def test_api_report_wan_two_experts_every_scheme(wan_dir, tmp_path):
    r = request("wan")
    runner = TrajectoryRunner(wan_dir, r)
    assert runner.subs == ["transformer", "transformer_2"] and runner.reload_from_disk
    rep = run_trajectory(runner, r, schemes=MAIN, backends=BACKENDS)
    assert write_report(rep, tmp_path / "w") == []
    data = _check_report(tmp_path / "w", r.steps, 2)  # 5 frames -> 2 latent frames -> 2 decoded (no temporal upsampling)
    assert data["transformers"] == ["transformer", "transformer_2"]
    assert len(rep["_images"]) == 1 + 3 * len(MAIN)
    # the float run is the same call every time: a second reference run is bit-identical (seeded, CPU)
    again = runner.with_request(r).reference("cpu")
    assert np.array_equal(again.frames, runner.reference("cpu").frames)


def test_other_schemes_run(flux_dir, tmp_path):
    """The schemes outside the main set (weight-only int, W4A8 MX) through the same loop on the reference."""
    r = request("flux")
    rep = run_trajectory(flux_dir, r, schemes=OTHERS, backends=["reference"])
    ok = {x["scheme"]: x for x in rep["rows"] if x["status"] == "ok"}
    assert set(ok) == set(OTHERS) and OTHERS
    for x in ok.values():
        assert 0 < x["final_latent_metrics"]["relative_l2"] < 0.2 and x["verdict"]["smoke"]["pass"], x


def test_cli_errors_name_the_argument(flux_dir, tmp_path, capsys):
    rc, text = _run(["trajectory", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--pipeline DIR or --small-pipeline" in text
    rc, text = _run(["trajectory", "--pipeline", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "missing" in text and "not a directory" in text
    rc, text = _run(["trajectory", "--pipeline", str(flux_dir / "transformer"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no model_index.json" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, text = _run(["trajectory", "--pipeline", str(flux_dir), "--config", str(bad), "--out", str(tmp_path / "o")],
                    capsys)
    assert rc == 2 and "bad.json" in text and "not valid JSON" in text
    bad.write_text(json.dumps({"scheme": "mxfp4", "ignored": ["x"]}))
    rc, text = _run(["trajectory", "--pipeline", str(flux_dir), "--config", str(bad), "--out", str(tmp_path / "o")],
                    capsys)
    assert rc == 2 and "unknown field" in text and "ignored" in text
    rc, text = _run(["trajectory", "--pipeline", str(flux_dir), "--schemes", "nope", "--steps", "1",
                     "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "nope" in text
    rc, text = _run(["trajectory", "--pipeline", str(flux_dir), "--num-frames", "3", "--out", str(tmp_path / "o")],
                    capsys)
    assert rc == 2 and "--num-frames: FluxPipeline takes no num_frames" in text
