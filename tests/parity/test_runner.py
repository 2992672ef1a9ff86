"""The runner and its verdicts, with deliberately faithful and deliberately broken backends.

* a backend that moves outputs by at most one output ulp (a different summation/epilogue order)
  must pass ``strict``;
* a backend whose quantizer differs in one byte must fail ``strict`` but pass ``smoke``;
* a backend with the wrong FP4 rounding must fail both tiers;
* ``unsupported`` and ``refused`` layers are reported, not failed; an exception is a failure.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from omni_npu_quant.backends.base import UNSUPPORTED, Capability
from omni_npu_quant.backends import ReferenceBackend
from omni_npu_quant.parity import build_source, resolve_backends, run_parity
from omni_npu_quant.parity.backends import BackendStatus, parse_backend_list, resolve_backend

from conftest import PRESENT


class OneUlp(ReferenceBackend):
    """Reference with ~20% of outputs moved by one ulp: what a different fp32 order may do."""

    name = "one-ulp"

    def apply(self, p, x, *, add_bias=True):
        y = super().apply(p, x, add_bias=add_bias)
        g = torch.Generator().manual_seed(int(y.numel()))
        mask = torch.rand(y.shape, generator=g) < 0.2
        step = torch.nextafter(y, torch.where(torch.rand(y.shape, generator=g) < 0.5, -1.0, 1.0).to(y.dtype) * float("inf"))
        return torch.where(mask, step, y)


class FlipQuantByte(ReferenceBackend):
    name = "flip-byte"

    def quantize_activation(self, p, x):
        q = super().quantize_activation(p, x)
        v = q["x_q"].clone()
        flat = v.view(torch.uint8).reshape(-1)
        flat[0] ^= 1
        q["x_q"] = v
        return q


class WrongRounding(ReferenceBackend):
    """Runs MX activations with 'floor' rounding instead of the scheme's."""

    name = "wrong-rounding"

    def prepare(self, scheme, tensors, act_dtype, *, k=None, where=""):
        return super().prepare(dataclasses.replace(scheme, act_round_mode="floor"), tensors, act_dtype, k=k,
                               where=where)


class Unsupported(ReferenceBackend):
    name = "nope"

    def capability(self, scheme):
        return Capability(UNSUPPORTED, "test backend refuses everything")


class Refuses(ReferenceBackend):
    name = "refuses"

    def prepare(self, scheme, tensors, act_dtype, *, k=None, where=""):
        raise ValueError(f"{where}: this kernel needs K % 4096 == 0")


class Crashes(ReferenceBackend):
    name = "crashes"

    def apply(self, p, x, *, add_bias=True):
        raise RuntimeError("kernel launch failed")


@pytest.fixture(scope="module")
def src_mxfp4():
    return build_source(model="tiny-llama", scheme="mxfp4", seq=8, layers="model.layers.0.*")


def _ref():
    return BackendStatus("reference", ReferenceBackend())


def _run(src, *bes, e2e=True):
    return run_parity(src, [_ref()] + [BackendStatus(b.name, b) for b in bes], repeat=0, end_to_end=e2e)


def test_reference_alone_passes_and_reports(src_mxfp4):
    rep = _run(src_mxfp4)
    assert rep["verdict"]["strict"]["pass"] and rep["verdict"]["smoke"]["pass"], rep["verdict"]
    assert len(rep["layers"]) == 7 and rep["end_to_end"]["reference"]["status"] == "ok"
    for L in rep["layers"]:
        r = L["results"]["reference"]
        assert r["status"] == "ok" and 0.95 < r["vs_float"]["cosine"] < 1.0  # quantization error is real


def test_one_ulp_backend_passes_strict(src_mxfp4):
    rep = _run(src_mxfp4, OneUlp())
    assert rep["verdict"]["strict"]["pass"], rep["verdict"]["strict"]["failures"][:3]
    r = rep["layers"][0]["results"]["one-ulp"]
    assert r["quant"]["identical"] and 0 < r["vs_reference"]["max_ulp"] <= 1.0
    e = rep["end_to_end"]["one-ulp"]
    assert not e["vs_reference"]["identical"]  # diverges end to end, yet stays as close to float
    ref_err = rep["end_to_end"]["reference"]["vs_float"]["rel_l2"]
    assert e["vs_float"]["rel_l2"] <= 1.1 * ref_err + 0.01


def test_one_ulp_on_int8_passes_strict():
    src = build_source(model="tiny-dit", scheme="w8a8_dynamic", seq=8, layers="blocks.0.*")
    rep = _run(src, OneUlp())
    assert rep["verdict"]["strict"]["pass"], rep["verdict"]["strict"]["failures"][:3]


def test_flipped_quantizer_byte_fails_strict_only(src_mxfp4):
    rep = _run(src_mxfp4, FlipQuantByte(), e2e=False)
    assert rep["verdict"]["smoke"]["pass"], rep["verdict"]["smoke"]["failures"][:3]
    assert not rep["verdict"]["strict"]["pass"]
    assert all("quantizer bytes differ" in f for f in rep["verdict"]["strict"]["failures"])
    assert len(rep["verdict"]["strict"]["failures"]) == 7


def test_wrong_rounding_fails_both_tiers(src_mxfp4):
    rep = _run(src_mxfp4, WrongRounding())
    for tier in ("smoke", "strict"):
        assert not rep["verdict"][tier]["pass"]
        fails = rep["verdict"][tier]["failures"]
        assert any("[wrong-rounding]" in f and "reference" in f and "float" not in f for f in fails), fails[:3]
    assert not rep["layers"][0]["results"]["wrong-rounding"]["quant"]["identical"]


def test_unsupported_and_refused_are_reported_not_failed(src_mxfp4):
    rep = _run(src_mxfp4, Unsupported(), Refuses())
    assert rep["verdict"]["strict"]["pass"], rep["verdict"]["strict"]["failures"][:3]
    r = rep["layers"][0]["results"]
    assert r["nope"]["status"] == "unsupported" and "refuses everything" in r["nope"]["reason"]
    assert r["refuses"]["status"] == "refused" and "K % 4096" in r["refuses"]["reason"]
    assert rep["end_to_end"]["nope"]["status"] == "skipped"
    modes = {b["name"]: b.get("modes") for b in rep["backends"]}
    assert modes["nope"]["mxfp4"]["mode"] == UNSUPPORTED


def test_crash_is_a_failure(src_mxfp4):
    rep = _run(src_mxfp4, Crashes(), e2e=False)
    for tier in ("smoke", "strict"):
        assert not rep["verdict"][tier]["pass"]
        assert any("kernel launch failed" in f for f in rep["verdict"][tier]["failures"])


def test_broken_weight_layout_fails_float_floor():
    """If every backend agrees but the weights are wrong, the float comparison catches it."""
    src = build_source(model="tiny-llama", scheme="w8a8_dynamic", seq=8, layers="model.layers.0.mlp.*")
    e = src.layers["model.layers.0.mlp.up_proj"]
    e.tensors["weight"] = e.tensors["weight"].flip(0).contiguous()  # rows permuted
    rep = _run(src, e2e=False)
    assert not rep["verdict"]["smoke"]["pass"]
    assert any("up_proj [reference]: cosine vs float" in f for f in rep["verdict"]["smoke"]["failures"])


def test_backend_names_and_reasons():
    assert parse_backend_list("npu-sim:A5, cuda,cuda") == ["reference", "npu-sim:A5", "cuda"]
    with pytest.raises(ValueError):
        parse_backend_list(" , ")
    st = resolve_backend("tpu")
    assert not st.available and "unknown backend" in st.reason
    if not torch.cuda.is_available():
        assert resolve_backend("cuda").reason == "cuda: no CUDA device"
    npu = resolve_backend("npu")
    if not npu.available:
        assert npu.reason.startswith("npu: ")


@pytest.mark.parametrize("backend", [b for b in PRESENT if b in ("npu-sim:A2", "npu-sim:A5")])
@pytest.mark.parametrize("scheme", ["w8a8_static", "mxfp4_dual"])
def test_tiny_models_on_emulator_pass_strict(backend, scheme):
    kind = "tiny-dit" if scheme == "mxfp4_dual" else "tiny-llama"
    src = build_source(model=kind, scheme=scheme, seq=8, layers="*.0.*")
    rep = run_parity(src, resolve_backends(["reference", backend]), repeat=0)
    assert rep["verdict"]["strict"]["pass"], rep["verdict"]["strict"]["failures"][:3]
    e = rep["end_to_end"][backend]
    assert e["status"] == "ok"
    if any(L["results"][backend].get("semantics") == "weight-only" for L in rep["layers"]):
        assert "vs_oracle" in e  # judged against the weight-only oracle, not the W4A4 reference
