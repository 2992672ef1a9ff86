"""Metric definitions used by the parity report (omni_npu_quant/parity/metrics.py)."""
from __future__ import annotations

import math

import pytest
import torch

from omni_npu_quant.parity.metrics import compare, compare_bytes, ulp


def test_identical_tensors():
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    m = compare(x.clone(), x)
    assert m["identical"] and m["cosine"] == pytest.approx(1.0) and m["rel_l2"] == 0.0
    assert m["max_abs"] == 0.0 and m["max_ulp"] == 0.0 and math.isinf(m["psnr_db"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_one_ulp_is_measured_as_one_ulp(dtype):
    x = torch.randn(64, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = x.clone()
    y[3] = torch.nextafter(x[3:4], torch.tensor([float("inf")], dtype=dtype))[0]
    y[7] = torch.nextafter(x[7:8], torch.tensor([float("-inf")], dtype=dtype))[0]
    m = compare(y, x)
    assert not m["identical"]
    # stepping down across a power of two is half an ulp of the (larger) reference value
    assert 0.5 <= m["max_ulp"] <= 1.0 + 1e-9
    assert m["normwise"] <= torch.finfo(dtype).eps
    y[5] = x[5] * 1.5 + 1
    assert compare(y, x)["max_ulp"] > 2


def test_ulp_at_zero_and_subnormal():
    u = ulp(torch.tensor([0.0, 1.0, 2.0]), torch.bfloat16)
    assert u[1] == 2.0 ** -7 and u[2] == 2.0 ** -6 and 0 < u[0] < 1e-38


def test_known_values():
    ref = torch.tensor([1.0, 0.0, -1.0, 2.0])
    out = torch.tensor([1.0, 0.5, -1.0, 2.0])
    m = compare(out, ref)
    assert m["max_abs"] == 0.5 and m["mae"] == 0.125
    assert m["rel_l2"] == pytest.approx(0.5 / math.sqrt(6))
    assert m["cosine"] == pytest.approx(6 / (math.sqrt(6) * math.sqrt(6.25)))
    assert m["psnr_db"] == pytest.approx(10 * math.log10(9 / (0.25 / 4)))
    assert m["normwise"] == 0.25


def test_nonfinite_and_zero_cases():
    ref = torch.tensor([1.0, 2.0, float("nan")])
    out = torch.tensor([1.0, float("inf"), float("nan")])
    m = compare(out, ref)
    assert m["new_nonfinite"] == 1 and not m["identical"]
    z = torch.zeros(4)
    assert compare(z, z)["cosine"] == 1.0 and compare(z, z)["identical"]
    assert compare(torch.ones(4), z)["cosine"] == 0.0 and math.isinf(compare(torch.ones(4), z)["rel_l2"])
    with pytest.raises(ValueError, match="shape"):
        compare(torch.zeros(3), torch.zeros(4))


def test_compare_bytes():
    a = {"x_q": torch.arange(-64, 64, dtype=torch.int8), "x_scale": torch.tensor([0.5, float("nan")])}
    assert compare_bytes(dict(a), a)["identical"]
    b = dict(a)
    b["x_q"] = a["x_q"].clone()
    b["x_q"][5] += 1
    r = compare_bytes(b, a)
    assert not r["identical"] and r["keys"]["x_q"]["mismatched_bytes"] == 1
    assert r["mismatch_frac"] == pytest.approx(1 / (128 + 8))
    c = dict(a)
    c["x_scale"] = torch.tensor([0.5, -float("nan")])  # a different NaN bit pattern is a difference
    assert not compare_bytes(c, a)["identical"]
    d = {"x_q": a["x_q"].to(torch.int16), "x_scale": a["x_scale"]}
    assert "vs reference" in compare_bytes(d, a)["keys"]["x_q"]["why"]
    e = {"x_q": a["x_q"]}
    assert compare_bytes(e, a)["keys"]["x_scale"]["why"] == "missing in backend"
