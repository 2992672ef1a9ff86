"""Platform detection, the capability table, backend registry/selection and `omni-npu-quant env`."""
from __future__ import annotations

import logging
import sys

import pytest
import torch

from omni_npu_quant import npu_sim
from omni_npu_quant import platform as P
from omni_npu_quant.backends import registry as R
from omni_npu_quant.cli import env as env_cli
from omni_npu_quant.cli.main import main as cli_main


def test_soc_and_gpu_families():
    assert [P.soc_family(v) for v in (220, 225, 250, 255, 260, 200, 205, 226, 100)] == \
        ["A2", "A2", "A3", "A3", "A5", "310P", "310P", None, None]
    assert P.soc_family_from_name("Ascend910B4") == "A2" and P.soc_family_from_name("Ascend910_9392") == "A3"
    assert P.soc_family_from_name("Ascend950PR") == "A5" and P.soc_family_from_name("Ascend310P3") == "310P"
    assert [P.cuda_family(*c) for c in ((8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0), (7, 5))] == \
        ["sm80", "sm80", "sm89", "sm90", "sm100", "sm120", None]
    assert P.device_from_name("npu-sim:a5") == P.DeviceInfo("npu", "A5", "npu-sim A5", simulated=True)
    with pytest.raises(ValueError, match="unknown device"):
        P.device_from_name("tpu")


def test_table_complete_and_consistent():
    for s in P.SCHEMES:
        for fam in P.DEVICE_FAMILIES:
            row = P.capability_row(s, fam)
            assert row.mode in ("native", "exact fallback", "unsupported") and row.reason and row.verified
    for s in ("mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"):
        assert P.capability_row(s, "A5").mode == "native"
        assert P.capability_row(s, "A2").mode == P.capability_row(s, "A3").mode == "exact fallback"
        # SM90: the Triton MX kernels (no MX tensor cores, exact bf16-upcast MMA) are CudaBackend's native path
        assert P.capability_row(s, "sm90").mode == "native" and P.capability_row(s, "sm100").mode == "native"
        assert P.capability_row(s, "sm80").mode == P.capability_row(s, "sm120").mode == "exact fallback"
    for s in ("w8a8_dynamic", "w8a8_static"):
        assert {P.capability_row(s, f).mode for f in ("A2", "A3", "A5", "sm80", "sm90")} == {"native"}
    assert P.capability_row("W4A4_MXFP4", "A5").mode == "native"  # msModelSlim labels work too
    assert P.capability_row("mxfp4", "cpu").backend == "reference"
    with pytest.raises(ValueError, match="unknown scheme"):
        P.capability_row("nvfp4", "A5")


def test_detect_cpu_and_emulated_npu():
    if "torch_npu" in sys.modules or torch.cuda.is_available():
        pytest.skip("this machine has a real accelerator stack")
    assert P.detect_device().kind == "cpu"
    with npu_sim.install("A3"):
        d = P.detect_device()
        assert (d.kind, d.family, d.simulated) == ("npu", "A3", True)
        be, cap = R.select_backend("mxfp4")
        assert be.name == "npu-sim:A3" and cap.mode == "exact fallback"
    assert P.detect_device().kind == "cpu"


def test_get_backend():
    assert R.get_backend("reference").name == "reference"
    assert R.get_backend("npu-sim:a2").name == "npu-sim:A2" and R.get_backend("npu-sim:A2") is R.get_backend("npu-sim:a2")
    with pytest.raises(ValueError, match="unknown backend"):
        R.get_backend("tpu")


def test_select_backend_walk_and_fallback_logging(caplog):
    be, cap = R.select_backend("mxfp4_dual", device="npu-sim:A5")
    assert (be.name, cap.mode) == ("npu-sim:A5", "native")
    be, cap = R.select_backend("w8a8_static", device="cpu")
    assert be.name == "reference"
    with caplog.at_level(logging.WARNING, logger="omni_npu_quant.backends"):
        be, cap = R.select_backend("mxfp4", device="310P")
    assert be.name == "reference" and "falling back" in caplog.text and "not targeted" in caplog.text
    be, _ = R.select_backend("mxfp8", device="sm90")  # CUDA backend may be absent on this machine
    assert be.name in ("reference", "cuda")


def test_env_override(monkeypatch):
    monkeypatch.setenv(P.BACKEND_ENV, "npu-sim:A2")
    be, cap = R.select_backend("w8a8_dynamic")
    assert be.name == "npu-sim:A2" and cap.mode == "native"
    monkeypatch.setenv(P.BACKEND_ENV, "nope")
    with pytest.raises(ValueError, match="unknown backend"):
        R.select_backend("w8a8_dynamic")


def test_env_cli(capsys):
    assert cli_main(["env", "--as", "A5"]) == 0
    out = capsys.readouterr().out
    assert "npu:A5" in out and "npu_dual_level_quant_matmul" in out
    assert cli_main(["env"]) == 0
    assert "selected backend per scheme" in capsys.readouterr().out
    md = env_cli.render_matrix()
    assert md.count("\n") == len(P.SCHEMES) + 1 and "| mxfp4_dual |" in md
