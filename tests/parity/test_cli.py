"""``omni-npu-quant parity`` end to end: default run on the built-in tiny model, outputs, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omni_npu_quant.cli.main import main

from conftest import PRESENT


def test_default_run_writes_json_md_png(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["parity", "--out", str(out), "--fail-on", "smoke", "--seq", "8", "--batch", "1", "--repeat", "1",
               "--layers", "model.layers.0.*"])
    err = capsys.readouterr().err
    assert rc == 0, err
    rep = json.loads((out / "parity.json").read_text())
    assert rep["source"]["description"].startswith("built-in tiny-llama") and "mxfp4" in rep["source"]["description"]
    names = {b["name"]: b for b in rep["backends"]}
    assert set(names) == {"reference", "npu-sim:A2", "npu-sim:A5", "cuda", "npu"}
    for n in PRESENT:
        if n in names:
            assert names[n]["available"]
    assert not names["npu"]["available"] and names["npu"]["reason"].startswith("npu: ")
    assert "backend npu: NOT available" in err
    if not names["cuda"]["available"]:
        assert names["cuda"]["reason"] in ("cuda: no CUDA device",) or names["cuda"]["reason"].startswith("cuda:")
    assert len(rep["layers"]) == 7 and rep["verdict"]["smoke"]["pass"]
    lat = rep["layers"][0]["results"]["reference"]["latency_ms"]
    assert isinstance(lat, float) and lat > 0
    if names["npu-sim:A2"]["available"]:
        assert names["npu-sim:A2"]["modes"]["mxfp4"]["mode"] == "exact fallback"
        assert rep["layers"][0]["results"]["npu-sim:A5"]["quant"]["identical"]
    md = (out / "parity.md").read_text()
    assert "## Verdict" in md and "**smoke**: PASS" in md and "| model.layers.0.mlp.up_proj | mxfp4 |" in md
    assert "cuda" in md and "top-1 agree" in md
    png = (out / "parity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_image_model_psnr_and_strict_exit(tmp_path, monkeypatch):
    """tiny-dit reports PSNR; --fail-on strict exits 1 when a backend breaks the rule."""
    from omni_npu_quant.backends import ReferenceBackend
    from omni_npu_quant.parity import backends as B

    class Flip(ReferenceBackend):
        name = "npu-sim:A5"

        def quantize_activation(self, p, x):
            q = super().quantize_activation(p, x)
            q["x_q"] = q["x_q"].clone()
            q["x_q"].view(-1)[0] ^= 1
            return q

    real = B.resolve_backend
    monkeypatch.setattr(B, "resolve_backend",
                        lambda n: B.BackendStatus(n, Flip()) if n == "npu-sim:A5" else real(n))
    args = ["parity", "--model", "tiny-dit", "--scheme", "w8a8_dynamic", "--backends", "reference,npu-sim:A5",
            "--seq", "16", "--batch", "1", "--repeat", "0", "--layers", "blocks.0.ff.*", "-q"]
    assert main(args + ["--out", str(tmp_path / "a"), "--fail-on", "smoke"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--fail-on", "strict", "--no-plot"]) == 1
    rep = json.loads((tmp_path / "b" / "parity.json").read_text())
    assert rep["source"]["image_like"] and isinstance(rep["end_to_end"]["reference"]["vs_float"]["psnr_db"], float)
    assert "PSNR" in (tmp_path / "b" / "parity.md").read_text()
    assert not (tmp_path / "b" / "parity.png").exists()


@pytest.mark.parametrize("argv, msg", [
    (["--checkpoint", "x", "--scheme", "mxfp4"], "--scheme applies to --model"),
    (["--model", "no/such/dir"], "not a directory and not a built-in"),
    (["--scheme", "int3"], "unknown scheme"),
    (["--layers", "nothing.*"], "matches no linear layer"),
    (["--inputs", "missing.pt"], "no such file"),
])
def test_bad_arguments_are_named(tmp_path, capsys, argv, msg):
    rc = main(["parity", "--out", str(tmp_path / "o"), "--backends", "reference", "-q"] + argv)
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_pickle_inputs_are_refused_not_unpickled(tmp_path, capsys):
    """--inputs never unpickles: an existing .pt file is refused by name before anything loads it."""
    pt = tmp_path / "batch.pt"
    pt.write_bytes(b"\x80\x04not a real pickle")  # would raise inside torch.load if it were ever opened
    rc = main(["parity", "--out", str(tmp_path / "o"), "--backends", "reference", "-q", "--inputs", str(pt)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "batch.pt" in err and "only .safetensors" in err


def test_console_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "omni_npu_quant.cli.main", "parity", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--fail-on" in r.stdout and "--checkpoint" in r.stdout
