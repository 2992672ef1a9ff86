"""Sensitivity search: groups, the planted sensitive group found, the proposal met on a held-out prompt / seed.

Targets, for random weights: the planted FLUX pipeline (conftest) quantized with mxfp4 on npu-sim:A2
(Atlas A2: MX weights through the exact weight-only fallback) measures ~46 dB all quantized and
~51 dB with ``transformer_blocks.*.ff.*`` float, while every other group alone moves it by about
+-0.2 dB.  A 48.5 dB target (+0.5 dB search margin) is therefore reachable only through the planted
group: a wrong ranking, a broken greedy step or a config that does not apply fails the test.
"""
from __future__ import annotations

import json

import pytest

from omni_npu_quant.cli.main import main
from omni_npu_quant.integrations.torch import QuantConfig, plan_quantization
from omni_npu_quant.parity.sensitivity import layer_groups, search_ignored
from omni_npu_quant.parity.trajectory import TrajectoryError, TrajectoryRunner

from .conftest import request

TARGET = 48.5


def test_layer_groups_by_kind_block_layer():
    names = {"blocks.0.attn1.to_q": (4, 8), "blocks.0.attn1.to_k": (4, 8), "blocks.1.attn1.to_q": (4, 8),
             "blocks.0.ffn.net.2": (8, 4), "blocks.1.ffn.net.2": (8, 4), "blocks.1.proj": (2, 2), "head": (1, 2)}
    kind = {g.pattern: g for g in layer_groups(names, "kind")}
    assert set(kind) == {"blocks.*.attn1.*", "blocks.*.ffn.*", "blocks.*.proj", "head"}
    assert kind["blocks.*.attn1.*"].layers == ["blocks.0.attn1.to_k", "blocks.0.attn1.to_q", "blocks.1.attn1.to_q"]
    assert kind["blocks.*.ffn.*"].weights == 64
    block = {g.pattern for g in layer_groups(names, "block")}
    assert block == {"blocks.0", "blocks.1", "head"}
    assert {g.pattern for g in layer_groups(names, "layer")} == set(names)
    # a glob that would also catch another group's layer falls back to exact names
    tricky = {"blocks.0.a.b": (1, 1), "blocks.0.x.a.b": (1, 1)}
    pats = {g.pattern for g in layer_groups(tricky, "kind")}
    assert "blocks.*.x.*" in pats and "blocks.*.a.*" not in pats
    with pytest.raises(TrajectoryError, match="--groups"):
        layer_groups(names, "rows")


def test_search_finds_the_planted_group_and_holds_out(planted_flux_dir, tmp_path, capsys):
    r = request("flux")
    argv = ["trajectory", "--pipeline", str(planted_flux_dir), "--steps", str(r.steps), "--height", "32", "--width",
            "32", "--guidance-scale", "3.5", "--max-sequence-length", "16", "--schemes", "mxfp4",
            "--backends", "npu-sim:A2", "--search-ignored", "--target-psnr", str(TARGET),
            "--holdout-prompt", "the blue car under a tree", "--holdout-seed", "5", "--out", str(tmp_path / "s")]
    rc = main(argv)
    text = capsys.readouterr().err
    assert rc == 0, text
    res = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert res["baseline_psnr_db"] < TARGET <= res["final_psnr_db"] - res["margin_db"]
    assert res["ignored_layers"] == ["transformer_blocks.*.ff.*"], res["groups"]
    top = res["groups"][0]
    assert top["pattern"] == "transformer_blocks.*.ff.*" and top["latent_error_removed"] > 0.5
    assert all(g["latent_error_removed"] < 0.2 for g in res["groups"][1:])
    assert res["holdout"]["meets_target"] and res["holdout"]["baseline_psnr_db"] < TARGET
    assert "transformer_blocks.*.ff.*" in (tmp_path / "s" / "sensitivity.md").read_text()
    # the written config is a QuantConfig the other tools take: the plan keeps exactly the planted group float ...
    cfg = QuantConfig.from_dict(json.loads((tmp_path / "s" / "quant_config.json").read_text()))
    runner = TrajectoryRunner(planted_flux_dir, request("flux", prompt="the blue car under a tree", seed=5))
    plan = {p.name: p for p in plan_quantization(runner.pipe.transformer, cfg)}
    assert plan["transformer_blocks.0.ff.net.2"].scheme is None and "ignored_layers" in \
        plan["transformer_blocks.0.ff.net.2"].reason
    assert plan["transformer_blocks.0.attn.to_q"].scheme == "mxfp4"
    # ... and `trajectory --config` applies it on the held-out request
    rc = main(argv[:argv.index("--search-ignored")] + ["--config", str(tmp_path / "s" / "quant_config.json"),
                                                        "--prompt", "the blue car under a tree", "--seed", "5",
                                                        "--out", str(tmp_path / "held")])
    capsys.readouterr()
    held = json.loads((tmp_path / "held" / "trajectory.json").read_text())
    row = next(x for x in held["rows"] if x["status"] == "ok")
    assert held["base_config"]["ignored_layers"] == ["transformer_blocks.*.ff.*"]
    assert row["output_metrics"]["all_frames_metrics"]["psnr_db"] >= TARGET


def test_search_returns_nothing_when_the_target_is_already_met(planted_flux_dir):
    runner = TrajectoryRunner(planted_flux_dir, request("flux"))
    res = search_ignored(runner, scheme="mxfp4", backend="npu-sim:A2", target_psnr=30.0)
    assert res["ignored_layers"] == [] and len(res["runs"]) == 1 and res["config"]["ignored_layers"] == []
    with pytest.raises(TrajectoryError, match="target-psnr"):
        search_ignored(runner, scheme="mxfp4", target_psnr=float("nan"))


def test_quantize_takes_the_proposed_config(flux_dir, tmp_path, capsys):
    """`quantize --config quant_config.json` (the search's output format) plans what the file says."""
    cfg = QuantConfig(scheme="w8a8_dynamic", ignored_layers=["transformer_blocks.*.ff.*"]).to_dict()
    path = tmp_path / "quant_config.json"
    path.write_text(json.dumps(cfg))
    rc = main(["quantize", "--model", str(flux_dir / "transformer"), "--config", str(path), "--plan", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    plan = {p["name"]: p for p in json.loads(out[out.index("["):])}
    assert plan["transformer_blocks.0.ff.net.2"]["scheme"] is None
    assert plan["transformer_blocks.0.attn.to_q"]["scheme"] == "w8a8_dynamic"
    rc = main(["quantize", "--model", str(flux_dir / "transformer"), "--config", str(path), "--scheme", "mxfp8",
               "--plan"])
    assert rc == 2 and "not also --scheme" in capsys.readouterr().err
    path.write_text("[1]")
    assert main(["quantize", "--model", str(flux_dir / "transformer"), "--config", str(path), "--plan"]) == 2
    assert "QuantConfig JSON object" in capsys.readouterr().err
