"""The main job (`omni-npu-quant demo`): the real all-MiniLM-L6-v2 by default, the tiny models as options."""
from __future__ import annotations

import json

import pytest

from omni_npu_quant.cli import main as cli
from omni_npu_quant.cli.demo import MINILM_BACKENDS, run_demo, run_minilm_demo
from omni_npu_quant.schemes import MAIN_SCHEMES, get_scheme


SUBSET = ["w8a16", "w8a8_dynamic", "mxfp8", "mxfp4", "w4a8_mxfp"]


@pytest.fixture(scope="module")
def minilm_report():
    pytest.importorskip("transformers")
    return run_minilm_demo(["w8a16", "w8a8_static", "mxfp4", "mxfp4_dual"])


def test_minilm_is_the_real_encoder(minilm_report):
    from omni_npu_quant.cli.demo import load_minilm

    model, _, path = load_minilm()
    assert type(model).__name__ == "BertModel"  # an encoder, not a causal-LM head on top
    assert minilm_report["model_dir"] == path
    # 6 layers x (q, k, v, attention out, intermediate, output); the unused pooler is kept out
    assert {r["linears"] for r in minilm_report["results"]} == {36}
    assert minilm_report["ignored"] == ["pooler.dense"]


def test_minilm_rows(minilm_report):
    from torch import nn

    from omni_npu_quant.backends.registry import get_backend
    from omni_npu_quant.cli.demo import load_minilm

    model = load_minilm()[0]
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith("pooler")}

    rows = {r["scheme"]: r for r in minilm_report["results"]}
    assert list(rows) == ["w8a16", "w8a8_static", "mxfp4", "mxfp4_dual"]
    assert minilm_report["backends"] == list(MINILM_BACKENDS)
    for name, r in rows.items():
        scheme = get_scheme(name)
        # kept-float layers are exactly those the scheme's own shape rule rejects, each with that reason
        assert r["layers"] + len(r["kept_float"]) == r["linears"]
        rejected = {n: scheme.shape_problem(m.out_features, m.in_features) for n, m in linears.items()}
        assert r["kept_float"] == {n: f"kept float: {why}" for n, why in rejected.items() if why}
        for be in MINILM_BACKENDS:
            x = r["backends"][be]
            assert -1.0 <= x["cosine_min"] <= x["cosine_mean"] <= 1.0 + 1e-9
            if be != "reference":  # the path shown is the backend's own capability for the scheme
                assert x["path"] == get_backend(be).capability(scheme).mode
    assert rows["w8a16"]["layers"] == 36 and not rows["w8a16"]["kept_float"]
    # dual-scale needs K % 512 == 0: on MiniLM only the six K=1536 output projections qualify
    assert rows["mxfp4_dual"]["layers"] == 6 and len(rows["mxfp4_dual"]["kept_float"]) == 30
    # FP4 + E8M0 per 32: (K/2 + K/32) / 2K bytes vs bf16 for every K
    assert rows["mxfp4"]["bytes_vs_bf16"] == pytest.approx(0.265625)
    # real-model quality: weight-only int8 is near-lossless, W4A4 MXFP4 loses the most
    ref = {n: r["backends"]["reference"]["cosine_mean"] for n, r in rows.items()}
    assert ref["w8a16"] > 0.995 and ref["w8a8_static"] > 0.98
    assert ref["mxfp4"] < ref["w8a8_static"] < ref["w8a16"]
    # A5 runs MX natively and matches the reference; A2 has no MX kernels: exact fallback, bf16 activations
    assert rows["mxfp4"]["backends"]["npu-sim:A5"]["path"] == "native"
    assert rows["mxfp4"]["backends"]["npu-sim:A5"]["cosine_mean"] == pytest.approx(ref["mxfp4"], abs=1e-3)
    assert rows["mxfp4"]["backends"]["npu-sim:A2"]["path"] == "exact fallback"
    assert rows["mxfp4"]["backends"]["npu-sim:A2"]["cosine_mean"] > ref["mxfp4"]  # activations not quantized


def test_demo_cli_default_is_minilm(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert cli.main(["demo", "--schemes", "w8a16", "mxfp4_dual", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    lines = text.splitlines()
    assert lines[0].startswith("all-MiniLM-L6-v2")
    for needle in ("cos ref", "cos A2 path", "cos A5 path", "Columns:", "Next steps", "omni-npu-quant calibrate",
                   "omni-npu-quant parity", "mxfp4_dual: 30 of 36 linears kept float"):
        assert needle in text, needle
    assert len(lines) <= 30
    # the backends' fallback notices are collected (JSON), not interleaved with the table
    assert "exact fallback on A2" not in captured.err
    rep = json.loads(out.read_text())
    assert [r["scheme"] for r in rep["results"]] == ["w8a16", "mxfp4_dual"]
    assert isinstance(rep["notes"], list)  # backend notices are logged once per process: content varies


def test_demo_cli_rejects_unknown_scheme(capsys):
    assert cli.main(["demo", "--schemes", "mxfp3"]) == 2
    assert "mxfp3" in capsys.readouterr().err


@pytest.mark.parametrize("kind,n_layers,schemes", [("llama", 14, None), ("dit", 12, SUBSET)])
def test_tiny_demo_rows(kind, n_layers, schemes):
    rep = run_demo(kind, schemes, seq=8)
    rows = {r["scheme"]: r for r in rep["results"]}
    assert set(schemes or (set(MAIN_SCHEMES) | {"w4a8_mxfp", "w8a16"})) == set(rows)
    for r in rows.values():
        assert r["layers"] == n_layers and not r["skipped_layers"]
        assert 0.0 < r["mean_layer_rel_l2"] < 0.5 and -1.0 <= r["e2e_cosine"] <= 1.0
    # bytes per weight vs bf16 (K = 512/1024): int8 = (K + 4) / 2K; MXFP4 = (K/2 + K/32) / 2K = 0.265625
    assert rows["mxfp4"]["bytes_vs_bf16"] == pytest.approx(0.265625)
    assert rows["mxfp8"]["bytes_vs_bf16"] == pytest.approx(0.515625)
    # error ordering that any correct implementation shows: weight-only int8 < W8A8 < W4A4
    assert rows["w8a16"]["mean_layer_rel_l2"] < rows["w8a8_dynamic"]["mean_layer_rel_l2"] < rows["mxfp4"]["mean_layer_rel_l2"]
    assert rows["w4a8_mxfp"]["mean_layer_rel_l2"] < rows["mxfp4"]["mean_layer_rel_l2"]


def test_tiny_demo_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert cli.main(["demo", "--model", "dit", "--seq", "8", "--schemes", "mxfp4", "w8a8_static", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "W4A4_MXFP4" in text and "e2e cos" in text and "Columns:" in text
    rep = json.loads(out.read_text())
    assert [r["scheme"] for r in rep["results"]] == ["mxfp4", "w8a8_static"]
