"""Standalone torch runtime: quantize_, load_quantized, QuantLinear, QuantConfig, the quantize CLI."""
import json

import pytest
import torch

from omni_npu_quant.integrations.torch.module import quantized_state_keys
from torch import nn

from omni_npu_quant.backends import ReferenceBackend
from omni_npu_quant.integrations.selection import SelectionError
from omni_npu_quant.integrations.torch import (QuantConfig, QuantLinear, load_quantized, plan_quantization,
                                               quantize_, quantized_tensor_sets)
from omni_npu_quant.models.tiny import build_tiny, tiny_inputs
from omni_npu_quant.schemes.registry import get_scheme
from omni_npu_quant.kernels import reference_linear

ONLINE = ["w8a8_dynamic", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"]


def _tiny(kind="llama", dtype=torch.bfloat16):
    return build_tiny(kind, seed=3, dtype=dtype, layers=1) if kind == "llama" else \
        build_tiny(kind, seed=3, dtype=dtype, blocks=1)


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("scheme", ONLINE)
def test_quantize_llama_every_linear_matches_reference(scheme, gen):
    model = _tiny()
    floats = {n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
              for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantize_(model, QuantConfig(scheme=scheme, ignored_layers=["lm_head"], backend="reference"))
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    sch = get_scheme(scheme)
    for name, (w, b) in floats.items():
        if name == "lm_head":
            continue
        mod = model.get_submodule(name)
        assert isinstance(mod, QuantLinear) and mod.scheme.name == scheme
        tensors = sch.quantize_weight(w, b)
        for k, v in tensors.items():  # the stored set is the scheme's quantization of the float weight
            assert torch.equal(mod.tensors[k], v), (name, k)
        x = (torch.randn(3, 5, mod.in_features, generator=gen) * 2).to(torch.bfloat16)
        x[0, 0, :7] = 0  # zeros and a saturating outlier
        x[1, 1, 3] = 3e4
        assert torch.equal(mod(x), reference_linear(sch, x, tensors)), name
    ids = tiny_inputs("llama", batch=1, seq=8)
    out = model(ids)
    assert out.shape == (1, 8, 256) and torch.isfinite(out.float()).all()
    r = repr(model.model.layers[0].mlp.down_proj)
    assert f"scheme={scheme}" in r and "backend=reference" in r and "mode=native" in r


@torch.no_grad()
def test_quantize_end_to_end_error_orders_8bit_below_4bit():
    ids = tiny_inputs("llama", batch=1, seq=16)
    errs = {}
    for s in ("w8a8_dynamic", "mxfp4"):
        model = _tiny()
        ref = model(ids)
        quantize_(model, s)
        errs[s] = _rel(model(ids), ref)
    assert errs["w8a8_dynamic"] < 0.25 and errs["w8a8_dynamic"] < errs["mxfp4"], errs


def test_tiny_dit_dual_scale_keep_first_blocks_and_incompatible_layers():
    model = build_tiny("dit", seed=0, blocks=2)
    lat = tiny_inputs("dit", batch=1, seq=16, model=model)
    ref = model(lat)
    cfg = QuantConfig(scheme="mxfp4_dual", keep_first_blocks=1, ignored_layers=["proj_out"])
    plan = {p.name: p for p in plan_quantization(model, cfg)}
    assert plan["proj_in"].scheme is None and "multiple of 512" in plan["proj_in"].reason
    assert plan["blocks.0.attn.to_q"].scheme is None and "keep_first_blocks" in plan["blocks.0.attn.to_q"].reason
    assert plan["blocks.1.ff.proj_out"].scheme == "mxfp4_dual"
    quantize_(model, cfg)
    assert isinstance(model.blocks[1].attn.to_q, QuantLinear)
    assert not isinstance(model.blocks[0].attn.to_q, QuantLinear) and not isinstance(model.proj_in, QuantLinear)
    out = model(lat)
    assert torch.isfinite(out.float()).all() and _rel(out, ref) < 1.0
    with pytest.raises(SelectionError, match="multiple of 512"):
        plan_quantization(build_tiny("dit", blocks=1), QuantConfig(scheme="float", layer_schemes={"proj_in": "mxfp4_dual"}))
    with pytest.raises(SelectionError, match="multiple of 512"):
        plan_quantization(build_tiny("dit", blocks=1), QuantConfig(scheme="mxfp4_dual", skip_incompatible=False))


def test_layer_schemes_and_options():
    model = _tiny()
    cfg = QuantConfig(scheme="mxfp8", ignored_layers=["lm_head"],
                      layer_schemes={"*.down_proj": "w8a8_dynamic", "model.layers.0.self_attn": "float",
                                     "model.layers.0.mlp.up_proj": {"scheme": "mxfp4", "act_round_mode": "rint"}})
    quantize_(model, cfg)
    L = model.model.layers[0]
    assert L.mlp.down_proj.scheme.name == "w8a8_dynamic"
    assert not isinstance(L.self_attn.q_proj, QuantLinear)
    assert L.mlp.up_proj.scheme.name == "mxfp4" and L.mlp.up_proj.scheme.act_round_mode == "rint"
    assert L.mlp.gate_proj.scheme.name == "mxfp8"
    assert model.omni_npu_quant_config == cfg.to_dict()


def test_quant_config_roundtrip_and_errors():
    cfg = QuantConfig(scheme="mxfp4_dual", ignored_layers=["lm_head"], layer_schemes={"*.down_proj": "float"},
                      backend="reference", scheme_options={"act_round_mode": "round"}, keep_first_blocks=2)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert QuantConfig.from_dict(d) == cfg and d["version"] == 1
    with pytest.raises(ValueError, match="unknown field"):
        QuantConfig.from_dict({"scheme": "mxfp4", "ignore": ["x"]})
    with pytest.raises(ValueError, match="version"):
        QuantConfig.from_dict({"scheme": "mxfp4", "version": 99})
    with pytest.raises(ValueError, match="unknown scheme"):
        plan_quantization(_tiny(), QuantConfig(scheme="mxfp3"))
    with pytest.raises(SelectionError, match="matches no layer"):
        plan_quantization(_tiny(), QuantConfig(scheme="mxfp4", ignored_layers=["model.layers.1"]))


def test_w8a8_static_needs_calibration_then_matches_reference():
    model = _tiny()
    with pytest.raises(ValueError, match="needs calibration"):
        quantize_(model, QuantConfig(scheme="w8a8_static"))
    ids = tiny_inputs("llama", batch=1, seq=16)
    ref = model(ids)
    quantize_(model, QuantConfig(scheme="w8a8_static", ignored_layers=["lm_head"]), calib_data=[ids])
    mod = model.model.layers[0].mlp.down_proj
    assert mod.scheme.name == "w8a8_static" and mod.tensors["input_scale"].numel() == 1
    assert _rel(model(ids), ref) < 0.2


def test_dtype_cast_changes_activation_dtype_not_scales(gen):
    model = _tiny()
    quantize_(model, QuantConfig(scheme="w8a8_dynamic", ignored_layers=["lm_head"]))
    mod = model.model.layers[0].mlp.up_proj
    ws = mod.tensors["weight_scale"].clone()
    model.to(torch.float16)
    assert mod.act_dtype == torch.float16 and mod.prepared.act_dtype == torch.float16
    assert mod.tensors["weight_scale"].dtype == torch.float32 and torch.equal(mod.tensors["weight_scale"], ws)
    x = torch.randn(4, 512, generator=gen).half()
    assert mod(x).dtype == torch.float16
    with pytest.raises(ValueError, match="expects 512"):
        mod(torch.randn(2, 100))


@pytest.mark.parametrize("scheme", ["w8a8_static", "mxfp4_dual"])
def test_load_quantized_from_ascendv1_checkpoint(tmp_path, scheme):
    from omni_npu_quant.checkpoint import write_ascendv1

    src = _tiny()
    ids = tiny_inputs("llama", batch=1, seq=8)
    quantize_(src, QuantConfig(scheme=scheme, ignored_layers=["lm_head"]), calib_data=ids)
    layers = quantized_tensor_sets(src)
    if scheme == "mxfp4_dual":  # a smoothed layer: stored as p.linear.* + p.div.mul_scale
        name = "model.layers.0.mlp.down_proj"
        label, t = layers[name]
        t["mul_scale"] = torch.rand(1024, generator=torch.Generator().manual_seed(5)) + 0.5
        src.model.layers[0].mlp.down_proj = QuantLinear(get_scheme(scheme), t, name=name)
    qkeys = quantized_state_keys(src)  # state_dict() carries the quantized sets too; the writer takes them apart
    floats = {k: v for k, v in src.state_dict().items() if k not in qkeys}
    write_ascendv1(tmp_path / "ck", layers, floats)
    dst = build_tiny("llama", seed=99, layers=1)  # different float weights: everything must come from disk
    load_quantized(dst, tmp_path / "ck", backend="reference")
    for n, m in src.named_modules():
        if isinstance(m, QuantLinear):
            d = dst.get_submodule(n)
            assert isinstance(d, QuantLinear) and d.scheme.name == scheme
            assert set(d.tensors) == set(m.tensors), n
    assert torch.equal(dst(ids), src(ids))


def test_load_quantized_from_tensor_sets_and_errors():
    src = _tiny()
    quantize_(src, QuantConfig(scheme="mxfp4", ignored_layers=["lm_head"]))
    sets = quantized_tensor_sets(src)
    dst = _tiny()
    load_quantized(dst, sets)
    ids = tiny_inputs("llama", batch=1, seq=8)
    assert torch.equal(dst(ids), src(ids))
    with pytest.raises(ValueError, match="has no module"):
        load_quantized(_tiny(), {"model.layers.7.mlp.up_proj": sets["model.layers.0.mlp.up_proj"]})
    with pytest.raises(ValueError, match=r"stores a \(1024, 512\) weight"):
        load_quantized(_tiny(), {"model.layers.0.mlp.down_proj": sets["model.layers.0.mlp.up_proj"]})


def test_transformers_llama_from_config_end_to_end():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_(model, QuantConfig(scheme="mxfp4_dual", ignored_layers=["lm_head"],
                                     layer_schemes={"*.mlp.down_proj": "w8a8_dynamic"}))
        out = model(ids).logits
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(names) == 7 and "model.layers.0.self_attn.k_proj" in names
    assert model.model.layers[0].mlp.down_proj.scheme.name == "w8a8_dynamic"
    assert out.shape == ref.shape and torch.isfinite(out.float()).all()
    assert _rel(out, ref) < 0.5


def test_quantize_cli_plan_and_out(tmp_path, capsys):
    from omni_npu_quant.checkpoint import load_checkpoint
    from omni_npu_quant.cli.main import main

    assert main(["quantize", "--model", "tiny-dit", "--scheme", "mxfp4_dual", "--ignored-layers", "proj_out",
                 "--keep-first-blocks", "1", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.attn.to_q" in out and "keep_first_blocks=1" in out and "6 of 14" in out
    assert main(["quantize", "--model", "tiny-llama", "--ignored-layers", "model.layers.01", "--plan"]) == 2
    assert "matches no layer" in capsys.readouterr().err
    assert main(["quantize", "--model", "tiny-llama", "--scheme", "w8a8_dynamic", "--ignored-layers", "lm_head",
                 "--layer-scheme", "*.down_proj=mxfp8", "--out", str(tmp_path / "o")]) == 0
    ck = load_checkpoint(tmp_path / "o")
    assert ck.layers["model.layers.0.mlp.down_proj"].label == "W8A8_MXFP8"
    assert ck.layers["model.layers.1.self_attn.q_proj"].label == "W8A8_DYNAMIC"
    assert "lm_head" not in ck.layers and "lm_head.weight" in ck.float_tensors


def test_quantize_nothing_warns(caplog):
    import logging

    from omni_npu_quant import quantize_
    from omni_npu_quant.integrations.torch import QuantConfig

    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 4))
    with caplog.at_level(logging.WARNING, logger="omni_npu_quant.integrations.torch"):
        quantize_(model, QuantConfig(scheme="mxfp4", ignored_layers=["0", "1"]))
    assert "no layer of Sequential was quantized" in caplog.text and "ignored_layers" in caplog.text
