"""GPTQ / AutoRound reader on checkpoints in the documented format (``producers.write_gptq``):
exact conversion (v1 ``zero - 1`` and v2 zeros, act-order ``g_idx``, per channel and per group),
detection (config.json, quantize_config.json, diffusers ``transformer/config.json``), strict
validation naming the file and the tensor."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni_npu_quant.backends.registry import get_backend
from omni_npu_quant.checkpoint import CheckpointError, load_checkpoint, validate_checkpoint
from omni_npu_quant.checkpoint.gptq import find_gptq_config, pack_gptq_qweight, unpack_gptq_qweight

from producers import random_gptq_layer, write_gptq


def _ckpt(tmp_path, *, gs=32, sym=False, act_order=False, v1=True, n=64, k=128, name="ck", seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    layers, exact = {}, {}
    for p in ("model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"):
        u, z, s, g, w = random_gptq_layer(n, k, k if gs == -1 else gs, sym=sym, act_order=act_order, gen=gen)
        layers[p] = (u, z, s, g)
        exact[p] = w
    floats = {"model.norm.weight": torch.ones(k, dtype=torch.bfloat16)}
    d = write_gptq(tmp_path / name, layers, group_size=gs, sym=sym, desc_act=act_order, v1=v1, floats=floats, **kw)
    return d, exact


@pytest.mark.parametrize("gs,sym,act_order,v1", [(32, False, False, True), (64, True, False, True),
                                                 (64, False, True, False), (-1, True, False, False),
                                                 (32, True, True, True)])
def test_exact_conversion(tmp_path, gs, sym, act_order, v1):
    d, exact = _ckpt(tmp_path, gs=gs, sym=sym, act_order=act_order, v1=v1)
    ck = load_checkpoint(d)
    assert ck.format == "gptq" and sorted(ck.layers) == sorted(exact) and list(ck.float_tensors) == ["model.norm.weight"]
    assert ck.model_quant_type == "W4A16" and not ck.warnings
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    ref = get_backend("reference")
    for p, e in ck.layers.items():
        assert (e.label, e.scheme_name, e.k, e.n) == ("W4A16", "w4a16", 128, 64)
        assert ("input_perm" in e.tensors) == act_order and ("weight_offset" in e.tensors) == (not sym)
        assert e.tensors["weight_scale"].dtype == torch.float16  # kept bit for bit
        w = e.scheme().dequantize_weight(e.tensors)
        assert torch.equal(w, exact[p])  # (u - z) * s is exact in fp32
        out = ref.apply(ref.prepare(e.scheme(), e.tensors, torch.float32), x)
        assert torch.allclose(out, x @ exact[p].t(), rtol=1e-5, atol=1e-5)
        if act_order:  # NPU emulator: gathers x, then the native int4 matmul
            b = get_backend("npu-sim:A2")
            o = b.apply(b.prepare(e.scheme(), e.tensors, torch.bfloat16), x.bfloat16()).float()
            assert float((o - x @ exact[p].t()).norm() / (x @ exact[p].t()).norm()) < 1e-2


def test_pack_roundtrip():
    u = torch.randint(0, 16, (64, 24), generator=torch.Generator().manual_seed(2))
    assert torch.equal(unpack_gptq_qweight(pack_gptq_qweight(u)), u.int())


def test_v1_zero_minus_one_is_read_as_gptq_consumers_do(tmp_path):
    # v1 (AutoGPTQ) stores zero - 1: a stored nibble 7 is zero 8 (symmetric) -> offset 0, no weight_offset
    d, _ = _ckpt(tmp_path, gs=32, sym=True, v1=True)
    t = load_file(str(d / "model.safetensors"))
    assert int(t["model.layers.0.mlp.up_proj.qzeros"][0, 0]) == 0x77777777
    assert "weight_offset" not in load_checkpoint(d).layers["model.layers.0.mlp.up_proj"].tensors
    # the same bytes declared v2 mean zero 7: offsets -1, and a warning because sym=true
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (d / "config.json").write_text(json.dumps(cfg))
    ck = load_checkpoint(d)
    off = ck.layers["model.layers.0.mlp.up_proj"].tensors["weight_offset"]
    assert bool((off == -1).all()) and any("sym=true" in w.message for w in ck.warnings)


def test_detection(tmp_path):
    d, _ = _ckpt(tmp_path)
    assert find_gptq_config(d)[1] == "config.json"
    # AutoGPTQ's quantize_config.json (no quant_method key)
    q = tmp_path / "qc"
    shutil.copytree(d, q)
    qc = json.loads((q / "config.json").read_text())["quantization_config"]
    qc.pop("quant_method")
    (q / "quantize_config.json").write_text(json.dumps(qc))
    (q / "config.json").write_text(json.dumps({"model_type": "none"}))
    assert find_gptq_config(q)[1] == "quantize_config.json" and len(load_checkpoint(q).layers) == 2
    # a diffusers pipeline: model_index.json + transformer/config.json
    pipe = tmp_path / "pipe"
    (pipe / "vae").mkdir(parents=True)
    shutil.copytree(d, pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "transformer": ["diffusers", "X"]}))
    root, name, _ = find_gptq_config(pipe)
    assert root.name == "transformer" and name == "config.json"
    assert len(load_checkpoint(pipe).layers) == 2
    shutil.copytree(d, pipe / "transformer_2")
    with pytest.raises(CheckpointError, match="several GPTQ/AutoRound transformers .transformer, transformer_2."):
        load_checkpoint(pipe)
    # an msModelSlim directory keeps its own reader even if a config.json names GPTQ
    ms = tmp_path / "ms"
    shutil.copytree(d, ms)
    (ms / "quant_model_description.json").write_text("{}")
    assert find_gptq_config(ms) is None


def _expect(d, *needles):
    probs = [p for p in validate_checkpoint(d) if p.severity == "error"]
    text = "\n".join(map(str, probs))
    for nd in needles:
        assert nd in text, text
    with pytest.raises(CheckpointError):
        load_checkpoint(d)


def _edit(d, fn):
    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"))


def _edit_cfg(d, **kv):
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"].update(kv)
    (d / "config.json").write_text(json.dumps(cfg))


P = "model.layers.0.mlp.up_proj"


def test_errors_name_file_and_tensor(tmp_path):
    d, _ = _ckpt(tmp_path, name="a")
    _edit(d, lambda t: t.pop(P + ".qzeros"))
    _expect(d, f"model.safetensors [{P}.qzeros]: missing")
    d, _ = _ckpt(tmp_path, name="b")
    _edit(d, lambda t: t.update({P + ".qweight": t[P + ".qweight"].to(torch.int16)}))
    _expect(d, f"model.safetensors [{P}.qweight]: expected 2-D int32")
    d, _ = _ckpt(tmp_path, name="c")
    _edit(d, lambda t: t.update({P + ".scales": t[P + ".scales"][:3]}))  # 3 groups do not divide K = 128
    _expect(d, f"[{P}.qzeros]")
    d, _ = _ckpt(tmp_path, name="d")
    _edit(d, lambda t: t.update({P + ".g_idx": torch.full((128,), 9, dtype=torch.int32)}))
    _expect(d, f"[{P}.g_idx]: values must lie in [0, 3]")
    d, _ = _ckpt(tmp_path, name="e")
    _edit(d, lambda t: t.update({P + ".g_idx": torch.tensor([0] * 40 + [1] * 24 + [2] * 32 + [3] * 32,
                                                            dtype=torch.int32)}))
    _expect(d, f"[{P}.g_idx]: act-order groups must each hold 32 input channels")
    d, _ = _ckpt(tmp_path, name="f")
    _edit(d, lambda t: t.update({P + ".weight": torch.zeros(4)}))
    _expect(d, f"[{P}.weight]: unexpected tensor next to {P}.qweight")
    d, _ = _ckpt(tmp_path, name="g")
    _edit(d, lambda t: t.update({"model.layers.1.o_proj.scales": torch.ones(1, 8, dtype=torch.float16)}))
    _expect(d, "[model.layers.1.o_proj.scales]: GPTQ tensor without model.layers.1.o_proj.qweight")
    d, _ = _ckpt(tmp_path, name="h")
    _edit(d, lambda t: t.update({P + ".scales": t[P + ".scales"] * float("nan")}))
    _expect(d, f"[{P}.scales]: non-finite")


def test_config_errors(tmp_path):
    for i, (kv, needle) in enumerate([
            (dict(bits=3), "config.json [bits]: bits=3"),
            (dict(checkpoint_format="marlin"), "config.json [checkpoint_format]: checkpoint_format='marlin'"),
            (dict(quant_method="auto-round", packing_format="auto_round:auto_awq"),
             "config.json [packing_format]: packing_format='auto_round:auto_awq' is not a GPTQ packing"),
            (dict(group_size=64), f"[{P}.scales]: 4 groups for K=128 means group size 32, but the quantization_config "
                                  f"says group_size=64"),
            (dict(sym="maybe"), "config.json [sym]"),
            (dict(quant_method="auto-round", act_bits=8), "config.json [act_bits]")]):
        d, _ = _ckpt(tmp_path, name=f"c{i}")
        _edit_cfg(d, **kv)
        _expect(d, needle)
    d, _ = _ckpt(tmp_path, name="nolayers")
    _edit(d, lambda t: [t.pop(k) for k in list(t) if k.startswith("model.layers")])
    _expect(d, "no *.qweight tensor is stored")


def test_index_and_shards(tmp_path):
    d, exact = _ckpt(tmp_path)
    t = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    a = {k: v for k, v in t.items() if "up_proj" in k}
    b = {k: v for k, v in t.items() if "up_proj" not in k}
    save_file(a, str(d / "model-00001-of-00002.safetensors"))
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    ck = load_checkpoint(d)
    assert sorted(ck.layers) == sorted(exact) and len(ck.files) == 2
    wm[P + ".qweight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    _expect(d, f"model-00001-of-00002.safetensors [{P}.qweight]: model.safetensors.index.json says this tensor "
               f"is in model-00002-of-00002.safetensors")


def test_mixed_bits_extra_config_reads_8bit_as_w8a16(tmp_path):
    gen = torch.Generator().manual_seed(4)
    u, z, s, _, w4 = random_gptq_layer(64, 128, 32, sym=False, act_order=False, gen=gen)
    d = write_gptq(tmp_path / "mix", {P: (u, z, s, None)}, group_size=32, sym=False, v1=False,
                   method="auto-round", config_extra={"packing_format": "auto_round",
                                                      "extra_config": {"lm_head": {"bits": 8}}})
    # an 8-bit lm_head, 4 values per int32 along K, zeros stored as is (auto_round packing)
    u8 = torch.randint(0, 256, (128, 64), generator=gen)
    z8 = torch.randint(0, 256, (128, 2), generator=gen)
    s8 = (torch.rand(128, 2, generator=gen) * 0.01).half()
    sh = torch.arange(0, 32, 8, dtype=torch.int64)
    to32 = lambda v: torch.where(v >= 2 ** 31, v - 2 ** 32, v).to(torch.int32)  # noqa: E731
    qw = to32((u8.t().to(torch.int64).reshape(16, 4, 128) << sh.reshape(1, 4, 1)).sum(1))
    qz = to32((z8.t().to(torch.int64).reshape(2, 32, 4) << sh).sum(-1))
    _edit(d, lambda t: t.update({"lm_head.qweight": qw, "lm_head.qzeros": qz, "lm_head.scales": s8.t().contiguous()}))
    ck = load_checkpoint(d)
    e8 = ck.layers["lm_head"]
    assert (e8.label, e8.scheme_name) == ("W8A16", "w8a16")
    w8 = (u8.float() - z8.float().repeat_interleave(32, 1)) * s8.float().repeat_interleave(32, 1)
    assert torch.equal(e8.scheme().dequantize_weight(e8.tensors), w8)
    assert torch.equal(ck.layers[P].scheme().dequantize_weight(ck.layers[P].tensors), w4)
    _edit_cfg(d, extra_config={"lm_head": {"bits": 2}})
    _expect(d, "[lm_head.qweight]: extra_config gives this layer bits=2")
