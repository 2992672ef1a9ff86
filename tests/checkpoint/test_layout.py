"""The AscendV1 layout module (one place for the naming) and shared-input groups recorded from data flow."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from omni_npu_quant.checkpoint import CheckpointError, load_checkpoint, validate_checkpoint, write_ascendv1
from omni_npu_quant.checkpoint import layout as L
from omni_npu_quant.schemes.registry import get_scheme

D = "quant_model_description.json"
PKG = Path(__file__).resolve().parents[2] / "omni_npu_quant"
# a string literal that spells the wrapper naming: '.linear.<suffix>', 'div.mul_scale', '.div.'
_NAMING = re.compile(r"\.linear\.|(^|\.)div\.mul_scale|\.div\.|^\.linear$|^\.div$")


def _errors(path):
    return [p for p in validate_checkpoint(path) if p.severity == "error"]


def _string_literals(tree):
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def test_no_module_restates_the_wrapper_naming():
    """Only layout.py spells '.linear.<suffix>' / 'div.mul_scale' in code (docstrings may describe it)."""
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "layout.py" and path.parent.name == "checkpoint":
            continue
        for node in _string_literals(ast.parse(path.read_text(encoding="utf-8"))):
            if _NAMING.search(node.value.replace("\\", "")):  # regex sources too
                hits.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value!r}")
    assert not hits, "AscendV1 naming restated outside checkpoint/layout.py:\n" + "\n".join(hits)


def test_layout_names_round_trip():
    keys = L.layer_tensor_keys("blocks.0.attn.to_out", "W4A4_MXFP4_DUALSCALE", ["weight", "bias", "mul_scale"])
    assert keys == {"weight": ("blocks.0.attn.to_out.linear.weight", "W4A4_MXFP4_DUALSCALE"),
                    "bias": ("blocks.0.attn.to_out.linear.bias", "W4A4_MXFP4_DUALSCALE"),
                    "mul_scale": ("blocks.0.attn.to_out.div.mul_scale", "FLOAT")}
    plain = L.layer_tensor_keys("m.q_proj", "W8A8_DYNAMIC", ["weight", "weight_scale", "bias"])
    assert plain == {"weight": ("m.q_proj.weight", "W8A8_DYNAMIC"), "weight_scale": ("m.q_proj.weight_scale", "W8A8_DYNAMIC"),
                     "bias": ("m.q_proj.bias", "FLOAT")}
    desc = {k: lab for k, lab in keys.values()}
    for s, (k, _) in keys.items():
        if s != "mul_scale":
            assert L.split_tensor_key(k, desc) == ("blocks.0.attn.to_out", s, True)
    # a module really named 'linear' (no div.mul_scale next to it) is not a wrapper
    assert L.split_tensor_key("norm1.linear.weight", {"norm1.linear.weight": "W8A8_DYNAMIC"}) == ("norm1.linear", "weight", False)
    assert L.wrapped_prefix_of_mul_scale("a.div.mul_scale") == "a" and L.wrapped_prefix_of_mul_scale("a.mul_scale") is None
    assert L.weight_label(desc, "blocks.0.attn.to_out") == "W4A4_MXFP4_DUALSCALE"
    assert L.SHARED_INPUT_TENSORS == ("mul_scale", "input_scale", "input_offset")


def test_vllm_renames_map_every_wrapped_name_back():
    ren = {re.compile(k): v for k, v in L.vllm_weight_renames().items()}

    def apply(name):
        for rx, rep in ren.items():
            name = rx.sub(rep, name)
        return name

    for s in L.WRAPPED_SUFFIXES:
        assert apply(L.tensor_key("m.x", s, True)) == f"m.x.{s}"
    assert apply(L.mul_scale_key("m.x")) == "m.x.mul_scale"
    assert apply("m.x.weight") == "m.x.weight"


@pytest.mark.parametrize("smoothed", [False, True])
def test_every_suffix_a_scheme_stores_is_a_known_linear_suffix(tmp_path, gen, smoothed):
    """W4A16 act-order ``input_perm`` (and every other scheme tensor) is read back, plain and wrapped."""
    from omni_npu_quant.schemes.registry import SCHEMES

    renames = next(iter(L.vllm_weight_renames()))
    for name in SCHEMES:  # vLLM maps every wrapped tensor a scheme declares back to p.<suffix>
        for spec in get_scheme(name).tensor_specs(32, 512):
            if spec.name != "mul_scale":
                assert re.search(renames, f"m.x.linear.{spec.name}"), (name, spec.name)
    ts = get_scheme("W4A16").quantize_weight(torch.randn(16, 256, generator=gen))
    ts["input_perm"] = torch.randperm(256, generator=gen).to(torch.int32)
    if smoothed:
        ts["mul_scale"] = torch.rand(256, generator=gen) + 0.5
    path = write_ascendv1(tmp_path / "c", {"m.x": ("W4A16", ts)}, {})
    assert _errors(path) == []
    assert torch.equal(load_checkpoint(path).layers["m.x"].tensors["input_perm"], ts["input_perm"])


def test_packed_groups_are_vllm_packing_only():
    names = ["a.q_proj", "a.k_proj", "a.v_proj", "a.o_proj", "b.gate_proj", "b.up_proj", "c.to_q", "c.to_k", "c.to_v",
             "d.w1", "d.w3"]
    assert sorted(L.packed_groups(names)) == [["a.q_proj", "a.k_proj", "a.v_proj"], ["b.gate_proj", "b.up_proj"]]


# ------------------------------------------------------------------------------------------------
def _static(gen, k=64, n=16, lo=-3.0, hi=4.0, mul=None):
    ts = get_scheme("W8A8").quantize_weight(torch.randn(n, k, generator=gen), act_min=lo, act_max=hi)
    if mul is not None:
        ts["mul_scale"] = torch.full((k,), mul)
    return ("W8A8", ts)


def _wan_attn2(gen, mismatch_kv=False):
    """Wan cross-attention: to_q reads the image tokens, to_k / to_v read the text tokens."""
    p = "blocks.0.attn2."
    return {p + "to_q": _static(gen, lo=-1.0, hi=1.0, mul=1.5),
            p + "to_k": _static(gen, lo=-5.0, hi=3.0, mul=0.7),
            p + "to_v": _static(gen, lo=-5.0, hi=3.0 + mismatch_kv, mul=0.7),
            p + "to_out.0": _static(gen, mul=1.1)}


def _add_record(path, groups):
    d = json.loads((path / D).read_text())
    d[L.SHARED_INPUT_GROUPS_KEY] = groups
    (path / D).write_text(json.dumps(d, indent=4))


def test_wan_attn2_with_different_q_and_kv_scales_is_accepted(tmp_path, gen):
    p = "blocks.0.attn2."
    rec = [[p + "to_k", p + "to_v"]]
    path = write_ascendv1(tmp_path / "w", _wan_attn2(gen), {}, shared_input_groups=rec)
    assert json.loads((path / D).read_text())[L.SHARED_INPUT_GROUPS_KEY] == rec
    assert _errors(path) == []
    ck = load_checkpoint(path)
    assert not torch.equal(ck.layers[p + "to_q"].tensors["mul_scale"], ck.layers[p + "to_k"].tensors["mul_scale"])
    nrec = write_ascendv1(tmp_path / "n", _wan_attn2(gen), {})  # no record: to_q/to_k/to_v are not a vLLM packing
    assert _errors(nrec) == []


def test_recorded_group_with_mismatched_scales_is_refused(tmp_path, gen):
    p = "blocks.0.attn2."
    with pytest.raises(CheckpointError, match=r"shared_input_groups\[0\].*input_scale"):
        write_ascendv1(tmp_path / "x", _wan_attn2(gen, mismatch_kv=True), {},
                       shared_input_groups=[[p + "to_k", p + "to_v"]])
    assert not (tmp_path / "x").exists()
    path = write_ascendv1(tmp_path / "w", _wan_attn2(gen, mismatch_kv=True), {})
    assert _errors(path) == []  # without a record nothing says to_k and to_v read one tensor
    _add_record(path, [[p + "to_k", p + "to_v"]])
    errs = _errors(path)
    assert errs and errs[0].tensor == p + "to_v.linear.input_scale" and "shared_input_groups[0]" in errs[0].message
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def _qkv(gen, mismatch):
    p = "model.layers.0.self_attn."
    out = {p + nm: _static(gen) for nm in ("q_proj", "k_proj", "v_proj")}
    out[p + "k_proj"][1]["input_scale"] = out[p + "q_proj"][1]["input_scale"] * (2 if mismatch else 1)
    out[p + "k_proj"][1]["input_offset"] = out[p + "q_proj"][1]["input_offset"].clone()
    out[p + "v_proj"][1]["input_scale"] = out[p + "q_proj"][1]["input_scale"].clone()
    out[p + "v_proj"][1]["input_offset"] = out[p + "q_proj"][1]["input_offset"].clone()
    return p, out


@pytest.mark.parametrize("record", [None, "qkv", "other"])
def test_packed_qkv_with_mismatched_scales_is_refused_with_or_without_record(tmp_path, gen, record):
    p, layers = _qkv(gen, mismatch=True)
    path = write_ascendv1(tmp_path / "c", layers, {})
    if record == "qkv":
        _add_record(path, [[p + "q_proj", p + "k_proj", p + "v_proj"]])
    elif record == "other":  # a record that does not mention q/k/v: vLLM still packs them into one GEMM
        _add_record(path, [[p + "q_proj", p + "v_proj"]])
    errs = _errors(path)
    assert any(e.tensor == p + "k_proj.input_scale" and "input_scale" in e.message for e in errs), errs
    p2, ok = _qkv(gen, mismatch=False)
    assert _errors(write_ascendv1(tmp_path / "ok", ok, {}, shared_input_groups=[[p2 + "q_proj", p2 + "k_proj",
                                                                                   p2 + "v_proj"]])) == []


def test_record_naming_a_missing_layer_is_an_error(tmp_path, gen):
    p = "blocks.0.attn2."
    path = write_ascendv1(tmp_path / "w", _wan_attn2(gen), {})
    _add_record(path, [[p + "to_k", p + "to_v", p + "to_kv_missing"]])
    errs = _errors(path)
    assert any("to_kv_missing" in e.message and e.tensor == "shared_input_groups[0]" and e.file == D for e in errs), errs
    with pytest.raises(CheckpointError, match="names .*attn2.nope"):
        write_ascendv1(tmp_path / "x", _wan_attn2(gen), {}, shared_input_groups=[[p + "to_k", p + "nope"]])


@pytest.mark.parametrize("bad", ["x", [["a.b"]], [["a", 3]], [[], []], {"g": 1},
                                 [["blocks.0.attn2.to_k", "blocks.0.attn2.to_v"], ["blocks.0.attn2.to_v",
                                                                                   "blocks.0.attn2.to_q"]]])
def test_ill_typed_record_is_an_error(tmp_path, gen, bad):
    path = write_ascendv1(tmp_path / "w", _wan_attn2(gen), {})
    _add_record(path, bad)
    errs = _errors(path)
    assert errs and all(e.tensor.startswith(L.SHARED_INPUT_GROUPS_KEY) and e.file == D for e in errs), errs


def test_calibrate_records_the_groups_it_found(tmp_path):
    """calibrate groups layers by the tensor they read and records that; the reader then enforces it."""
    from omni_npu_quant.calibration import CalibOptions, calibrate
    from safetensors.torch import load_file, save_file

    out = tmp_path / "cal"
    calibrate(CalibOptions(out=str(out), model="tiny-dit", model_layers=1, scheme="w8a8_static", num_samples=2,
                           seq_len=16, max_rows=32, alphas=(0.5,), clamps=(None,), progress=False, evaluate=False))
    d = json.loads((out / D).read_text())
    groups = d[L.SHARED_INPUT_GROUPS_KEY]
    assert ["blocks.0.attn.to_q", "blocks.0.attn.to_k", "blocks.0.attn.to_v"] in groups
    assert (out / "calibration_report.json").is_file() and _errors(out) == []
    w = out / "quant_model_weights.safetensors"
    t = load_file(str(w))
    key = next(k for k in t if k.startswith("blocks.0.attn.to_k") and k.endswith("input_scale"))
    t[key] = t[key] * 3
    save_file(t, str(w))
    assert any(e.tensor == key for e in _errors(out))
