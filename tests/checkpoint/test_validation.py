"""Writer-made checkpoints and one corruption per validation rule (no msModelSlim needed)."""
from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni_npu_quant.checkpoint import CheckpointError, load_checkpoint, validate_checkpoint, write_ascendv1
from omni_npu_quant.schemes.registry import get_scheme
from omni_npu_quant.kernels import reference_linear

D = "quant_model_description.json"
W = "quant_model_weights.safetensors"
P = "model.layers.0.self_attn."


def _layers(gen, k=64, n=32, label="W8A8_DYNAMIC"):
    out = {}
    for nm in ("q_proj", "k_proj", "v_proj", "o_proj"):
        w = torch.randn(n, k, generator=gen)
        if label == "W8A8":
            ts = get_scheme(label).quantize_weight(w, torch.randn(n, generator=gen), act_min=-3.0, act_max=4.0)
        else:
            ts = get_scheme(label).quantize_weight(w, torch.randn(n, generator=gen) if nm == "o_proj" else None)
        out[P + nm] = (label, ts)
    return out


@pytest.fixture
def ckpt(tmp_path, gen):
    floats = {"model.embed_tokens.weight": torch.randn(10, 64, generator=gen).bfloat16(),
              "model.layers.0.input_layernorm.weight": torch.ones(64, dtype=torch.bfloat16)}
    return write_ascendv1(tmp_path / "ck", _layers(gen), floats, config={"model_type": "llama"})


def _errors(path):
    return [p for p in validate_checkpoint(path) if p.severity == "error"]


def _expect(path, *needles):
    errs = _errors(path)
    text = "\n".join(str(p) for p in errs)
    assert errs, "expected a validation error"
    for nd in needles:
        assert nd in text, f"{nd!r} not in:\n{text}"
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(path)
    assert ei.value.problems
    return errs


def _edit(path, fn_tensors=None, fn_desc=None):
    if fn_tensors:
        t = load_file(str(path / W))
        fn_tensors(t)
        save_file(t, str(path / W))
    if fn_desc:
        d = json.loads((path / D).read_text())
        fn_desc(d)
        (path / D).write_text(json.dumps(d, indent=4))


def test_writer_output_loads_and_matches(ckpt, gen):
    ck = load_checkpoint(ckpt)
    assert ck.format == "ascendv1" and _errors(ckpt) == []
    d = json.loads((ckpt / D).read_text())
    assert list(d)[-5:] == ["version", "model_quant_type", "metadata", "group_size", "optional"]
    assert d["model_quant_type"] == "W8A8_DYNAMIC" and d[P + "o_proj.bias"] == "FLOAT"
    assert ck.layers[P + "o_proj"].tensors["bias"].dtype == torch.float32
    x = torch.randn(3, 64, generator=gen, dtype=torch.bfloat16)
    e = ck.layers[P + "q_proj"]
    assert torch.equal(reference_linear(get_scheme(e.scheme_name), x, e.tensors), reference_linear(get_scheme("w8a8_dynamic"), x, e.tensors))


def test_missing_tensor(ckpt):
    _edit(ckpt, lambda t: t.pop(P + "q_proj.weight_scale"), lambda d: d.pop(P + "q_proj.weight_scale"))
    _expect(ckpt, "weight_scale", P + "q_proj", W)


def test_extra_tensor_with_quant_label(ckpt):
    _edit(ckpt, lambda t: t.__setitem__(P + "q_proj.foo", torch.zeros(2)), lambda d: d.__setitem__(P + "q_proj.foo", "W8A8_DYNAMIC"))
    _expect(ckpt, "foo")


def test_dtype_mismatch(ckpt):
    _edit(ckpt, lambda t: t.__setitem__(P + "k_proj.weight", t[P + "k_proj.weight"].to(torch.int32)))
    _expect(ckpt, "dtype", "int32", P + "k_proj")


def test_shape_mismatch(ckpt):
    _edit(ckpt, lambda t: t.__setitem__(P + "k_proj.weight_scale", torch.ones(31, 1)))
    _expect(ckpt, "shape", "weight_scale")


def test_json_label_without_tensor_and_tensor_without_label(ckpt):
    _edit(ckpt, fn_desc=lambda d: d.__setitem__("model.norm.weight", "FLOAT"))
    _expect(ckpt, "model.norm.weight", "stored in no weight file")
    _edit(ckpt, fn_desc=lambda d: (d.pop("model.norm.weight"), d.pop("model.embed_tokens.weight")))
    _expect(ckpt, "model.embed_tokens.weight", "no label")


def test_model_quant_type_mismatch_is_only_a_warning(ckpt):
    _edit(ckpt, fn_desc=lambda d: d.__setitem__("model_quant_type", "W4A4_MXFP4"))
    ps = validate_checkpoint(ckpt)
    assert [p.severity for p in ps] == ["warning"] and "model_quant_type" in ps[0].tensor
    assert load_checkpoint(ckpt).layers[P + "q_proj"].label == "W8A8_DYNAMIC"


def test_truncated_safetensors(ckpt):
    raw = (ckpt / W).read_bytes()
    (ckpt / W).write_bytes(raw[:-10])
    _expect(ckpt, "truncated", W)


def test_corrupt_header(ckpt):
    raw = bytearray((ckpt / W).read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    raw[8:8 + n] = b"{" + b"x" * (n - 1)
    (ckpt / W).write_bytes(bytes(raw))
    _expect(ckpt, "not valid JSON", W)
    (ckpt / W).write_bytes(struct.pack("<Q", 10 ** 9) + b"{}")
    _expect(ckpt, "exceeds the file size")


def test_label_mismatch_inside_a_layer(ckpt):
    _edit(ckpt, fn_desc=lambda d: d.__setitem__(P + "q_proj.weight_scale", "W8A16"))
    _expect(ckpt, "different labels", P + "q_proj")


def test_unserved_label_is_refused_with_layer_names(ckpt):
    def f(d):
        for k in list(d):
            if k.startswith(P + "o_proj") and not k.endswith("bias"):
                d[k] = "W4A8_DYNAMIC"
    _edit(ckpt, fn_desc=f)
    _expect(ckpt, "W4A8_DYNAMIC", "not served", P + "o_proj")


@pytest.mark.parametrize("sib_label", ["W8A8_DYNAMIC:W8A16", "FLOAT"])
def test_fused_siblings_with_different_labels(tmp_path, gen, sib_label):
    layers = _layers(gen)
    floats = {}
    if sib_label == "FLOAT":
        layers.pop(P + "v_proj")
        floats[P + "v_proj.weight"] = torch.randn(32, 64, generator=gen).bfloat16()
    else:
        ts = layers[P + "v_proj"][1]
        layers[P + "v_proj"] = ("W8A16", ts)
    path = write_ascendv1(tmp_path / "c", layers, floats)
    _expect(path, "fused siblings", "q_proj/k_proj/v_proj")


def test_fused_siblings_with_different_input_scale(tmp_path, gen):
    layers = _layers(gen, label="W8A8")
    layers[P + "k_proj"][1]["input_scale"] = layers[P + "k_proj"][1]["input_scale"] * 2
    path = write_ascendv1(tmp_path / "c", layers, {})
    _expect(path, "input_scale", "share")


def test_fused_siblings_with_different_mul_scale(tmp_path, gen):
    layers = _layers(gen)
    for i, nm in enumerate(("q_proj", "k_proj", "v_proj")):
        layers[P + nm][1]["mul_scale"] = torch.full((64,), 1.0 + (nm == "v_proj"))
    path = write_ascendv1(tmp_path / "c", layers, {})
    _expect(path, "mul_scale", P + "v_proj")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_mul_scale(ckpt, bad):
    def f(t):
        ms = torch.ones(64)
        ms[5] = bad
        t[P + "o_proj.div.mul_scale"] = ms
        for s in ("weight", "weight_scale", "weight_offset", "bias"):
            t[P + "o_proj.linear." + s] = t.pop(P + "o_proj." + s)

    def g(d):
        d[P + "o_proj.div.mul_scale"] = "FLOAT"
        for s in ("weight", "weight_scale", "weight_offset", "bias"):
            d[P + "o_proj.linear." + s] = d.pop(P + "o_proj." + s)
    _edit(ckpt, f, g)
    _expect(ckpt, "mul_scale", "finite and > 0")


def test_e8m0_code_255(tmp_path, gen):
    layers = {P + "q_proj": ("W8A8_MXFP8", get_scheme("mxfp8").quantize_weight(torch.randn(16, 64, generator=gen)))}
    layers[P + "q_proj"][1]["weight_scale"][3, 1] = 255
    path = write_ascendv1(tmp_path / "c", layers, {}, validate=False)
    _expect(path, "255", "weight_scale")


def test_dual_scale_k_not_multiple_of_512(tmp_path, gen):
    ts = get_scheme("mxfp4_dual").quantize_weight(torch.randn(16, 1024, generator=gen))
    ts = {"weight": ts["weight"][:, :128], "weight_scale": ts["weight_scale"][:, :8],
          "weight_dual_scale": ts["weight_dual_scale"][:, :1]}
    path = write_ascendv1(tmp_path / "c", {P + "o_proj": ("W4A4_MXFP4_DUALSCALE", ts)}, {}, validate=False)
    _expect(path, "multiple of 512", "K=256")


def _shard(tmp_path, gen):
    return write_ascendv1(tmp_path / "s", _layers(gen), {"lm_head.weight": torch.randn(10, 64, generator=gen)},
                          part_file_size=2e-6)


def test_multi_shard_writer_and_index(tmp_path, gen):
    path = _shard(tmp_path, gen)
    idx = json.loads((path / (W + ".index.json")).read_text())
    files = sorted(set(idx["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"quant_model_weights-00001-of-{len(files):05d}.safetensors"
    assert not (path / W).exists() and _errors(path) == []
    ck = load_checkpoint(path)
    assert ck.files == files and len(ck.layers) == 4
    assert idx["metadata"]["total_size"] == sum(t.numel() * t.element_size() for e in ck.layers.values()
                                                for t in e.tensors.values()) + 10 * 64 * 4


@pytest.mark.parametrize("target", ["../evil.safetensors", "/etc/passwd", "link.safetensors"])
def test_index_path_traversal(tmp_path, gen, target):
    path = _shard(tmp_path, gen)
    ip = path / (W + ".index.json")
    idx = json.loads(ip.read_text())
    if target == "link.safetensors":
        outside = tmp_path / "outside.safetensors"
        shutil.copyfile(path / idx["weight_map"][P + "q_proj.weight"], outside)
        os.symlink(outside, path / target)
    key = P + "q_proj.weight"
    idx["weight_map"][key] = target
    ip.write_text(json.dumps(idx))
    _expect(path, "outside the checkpoint", key)


def test_index_entry_pointing_at_wrong_shard(tmp_path, gen):
    path = _shard(tmp_path, gen)
    ip = path / (W + ".index.json")
    idx = json.loads(ip.read_text())
    files = sorted(set(idx["weight_map"].values()))
    key = next(k for k, f in idx["weight_map"].items() if f == files[0])
    idx["weight_map"][key] = files[-1]
    ip.write_text(json.dumps(idx))
    _expect(path, "index", key)


def test_stray_weight_file_and_ambiguous_description(ckpt):
    shutil.copyfile(ckpt / D, ckpt / "quant_model_description_w8a8_dynamic.json")
    _expect(ckpt, "ambiguous")


def test_fa3_and_online_quarot_are_refused(ckpt):
    _edit(ckpt, fn_desc=lambda d: d.__setitem__(P[:-1] + ".quant_type", "INT8"))
    _expect(ckpt, "FA3", "not served")
    _edit(ckpt, fn_desc=lambda d: (d.pop(P[:-1] + ".quant_type"), d.__setitem__("metadata", {"quarot": {"x": 1}})))
    _expect(ckpt, "online QuaRot")
    _edit(ckpt, lambda t: t.__setitem__(P + "heads_rotation", torch.eye(4)),
          lambda d: (d.__setitem__("metadata", {}), d.__setitem__(P + "heads_rotation", "FLOAT")))
    _expect(ckpt, "heads_rotation")


def test_optional_quarot_rotation(ckpt):
    (ckpt / "optional").mkdir()
    rot = torch.linalg.qr(torch.randn(64, 64))[0].contiguous()
    save_file({"global_rotation": rot}, str(ckpt / "optional" / "quarot.safetensors"))
    _edit(ckpt, fn_desc=lambda d: d.__setitem__(
        "optional", {"quarot": {"rotation_map": {"global_rotation": "optional/quarot.safetensors"}}}))
    ck = load_checkpoint(ckpt)
    assert torch.equal(ck.optional_tensors["quarot.global_rotation"], rot)
    _edit(ckpt, fn_desc=lambda d: d.__setitem__(
        "optional", {"quarot": {"rotation_map": {"global_rotation": "../quarot.safetensors"}}}))
    _expect(ckpt, "global_rotation")
    _edit(ckpt, fn_desc=lambda d: d.__setitem__("optional", {"flatquant": {"x": 1}}))
    _expect(ckpt, "flatquant")


def test_w8a8_quirks_and_v0_naming(tmp_path, gen):
    """V0: quant_model_description_w8a8.json + quant_model_weight_w8a8.safetensors, weight_scale and input_scale
    in the model dtype, int64 deq_scale; W8A8 bias FLOAT kept verbatim and not recomputed."""
    layers = _layers(gen, label="W8A8")
    src = write_ascendv1(tmp_path / "v1", layers, {})
    t = load_file(str(src / W))
    d = json.loads((src / D).read_text())
    for nm in ("q_proj", "k_proj", "v_proj", "o_proj"):
        p = P + nm
        deq = t[p + ".deq_scale"]
        t[p + ".deq_scale"] = deq.view(torch.int32).to(torch.int64)
        t[p + ".input_scale"] = t[p + ".input_scale"].bfloat16()
        t[p + ".input_offset"] = t[p + ".input_offset"].bfloat16()
        t[p + ".weight_scale"] = (deq / t[p + ".input_scale"].float()).unsqueeze(-1).bfloat16()
        t[p + ".weight_offset"] = torch.zeros(32, 1, dtype=torch.bfloat16)
        d[p + ".weight_scale"] = d[p + ".weight_offset"] = "W8A8"
    v0 = tmp_path / "v0"
    v0.mkdir()
    save_file(t, str(v0 / "quant_model_weight_w8a8.safetensors"))
    (v0 / "quant_model_description_w8a8.json").write_text(json.dumps({k: v for k, v in d.items() if "." in k} |
                                                                      {"model_quant_type": "W8A8"}))
    ck = load_checkpoint(v0)
    assert ck.format == "v0" and _errors(v0) == []
    e = ck.layers[P + "o_proj"]
    assert e.tensors["deq_scale"].dtype == torch.int64 and torch.equal(e.tensors["quant_bias"], layers[P + "o_proj"][1]["quant_bias"])
    for s, key in e.keys.items():  # verbatim: nothing recomputed or cast
        assert e.tensors[s].dtype == t[key].dtype and torch.equal(e.tensors[s], t[key]), key
    y = reference_linear(get_scheme(e.scheme_name), torch.randn(4, 64, generator=gen), e.tensors)
    assert torch.isfinite(y).all()


def test_writer_mul_scale_wrapper_round_trip(tmp_path, gen):
    ts = get_scheme("mxfp4_dual").quantize_weight(torch.randn(16, 512, generator=gen), torch.randn(16, generator=gen))
    ts["mul_scale"] = torch.rand(512, generator=gen) + 0.5
    path = write_ascendv1(tmp_path / "c", {"blocks.0.attn.to_out": ("W4A4_MXFP4_DUALSCALE", ts)}, {})
    d = json.loads((path / D).read_text())
    assert d["blocks.0.attn.to_out.div.mul_scale"] == "FLOAT"
    assert d["blocks.0.attn.to_out.linear.bias"] == "W4A4_MXFP4_DUALSCALE" and d["group_size"] == 32
    assert "blocks.0.attn.to_out.weight" not in d
    e = load_checkpoint(path).layers["blocks.0.attn.to_out"]
    assert e.k == 512 and set(e.tensors) == set(ts) and all(torch.equal(e.tensors[s], ts[s]) for s in ts)
    x = torch.randn(2, 512, generator=gen, dtype=torch.bfloat16)
    assert torch.equal(reference_linear(get_scheme("mxfp4_dual"), x, e.tensors), reference_linear(get_scheme("mxfp4_dual"), x, ts))


def test_writer_is_atomic_and_refuses_overwrite(tmp_path, gen, ckpt):
    with pytest.raises(CheckpointError, match="not empty"):
        write_ascendv1(ckpt, _layers(gen), {})
    bad = _layers(gen)
    bad[P + "z_proj"] = ("W8A8_DYNAMIC", {"weight": torch.zeros(4, 4)})  # invalid: float weight
    with pytest.raises(CheckpointError, match="z_proj"):
        write_ascendv1(tmp_path / "new", bad, {})
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    out = write_ascendv1(ckpt, _layers(gen, label="W8A16"), {}, overwrite=True, quantization_config_marker=True,
                         config={"model_type": "llama", "quantization_config": {"quant_method": "other"}})
    assert load_checkpoint(out).layers[P + "q_proj"].label == "W8A16"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "omni_npu_quant" and qc["model_quant_type"] == "W8A16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_inspect_cli(ckpt, capsys):
    from omni_npu_quant.cli.main import main

    assert main(["inspect", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "W8A8_DYNAMIC -> w8a8_dynamic" in out and "validation: OK" in out
    assert main(["inspect", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["valid"] and len(info["layers"]) == 4 and info["totals"]["ratio_vs_bf16"] < 0.6
    (ckpt / W).write_bytes(b"\0" * 4)
    assert main(["inspect", str(ckpt)]) == 1
    assert "validation: FAILED" in capsys.readouterr().out
