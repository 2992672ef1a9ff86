"""`omni-npu-quant quantize` answers the CLI way: calibrate for static int8, every kept-float layer with its reason."""
from __future__ import annotations

import pytest

from omni_npu_quant.cli.main import main
from omni_npu_quant.schemes import get_scheme


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    from omni_npu_quant.cli.demo import load_minilm

    model, _, path = load_minilm()
    return model, path


def test_static_int8_points_to_calibrate(minilm, capsys, tmp_path):
    _, path = minilm
    out = tmp_path / "ck"
    assert main(["quantize", "--model", path, "--scheme", "w8a8_static", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"omni-npu-quant calibrate --model {path} --scheme w8a8_static --out {out}" in err
    assert "act_ranges" not in err and "calib_data" not in err  # no Python-API advice on the command line
    assert not out.exists()


def test_plan_reports_every_kept_float_layer_with_its_reason(minilm, capsys):
    from torch import nn

    model, path = minilm
    assert main(["quantize", "--model", path, "--scheme", "mxfp4_dual", "--plan"]) == 0
    text = capsys.readouterr().out
    scheme = get_scheme("mxfp4_dual")
    rejected = {n: scheme.shape_problem(m.out_features, m.in_features)
                for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    rejected = {n: why for n, why in rejected.items() if why}
    assert rejected  # MiniLM has K = 384 layers
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln and ln.split()[0] in rejected}
    assert set(lines) == set(rejected)
    for n, why in rejected.items():
        assert "float" in lines[n] and why in lines[n]
    for why in set(rejected.values()):
        n = sum(1 for v in rejected.values() if v == why)
        assert f"kept float: {n} layer(s): {why}" in text


def test_lm_head_is_float_by_default(capsys):
    assert main(["quantize", "--model", "tiny-llama", "--scheme", "mxfp4", "--plan"]) == 0
    text = capsys.readouterr().out
    (row,) = [ln for ln in text.splitlines() if ln.startswith("lm_head ")]
    assert " float " in row and "lm_head" in row.split(None, 3)[-1]
    assert "14 of 15 linear layers quantized" in text
