"""Quantized models round-trip through state_dict() / save_pretrained() into load_quantized (issue 17)."""
from __future__ import annotations

import json

import pytest
import torch

from omni_npu_quant import load_quantized, quantize_
from omni_npu_quant.integrations.torch import QuantConfig
from omni_npu_quant.integrations.torch.module import QuantLinear


def _llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(torch.bfloat16)


@pytest.mark.parametrize("scheme", ["mxfp4", "w8a8_dynamic", "mxfp8"])
def test_save_pretrained_roundtrip(tmp_path, scheme):
    m = _llama()
    quantize_(m, QuantConfig(scheme=scheme, scheme_options={"act_round_mode": "floor"} if scheme == "mxfp4" else {}))
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    y = m(ids).logits
    sd = m.state_dict()
    assert "model.layers.0.self_attn.q_proj.weight_scale" in sd  # quantized layers are in the state dict
    m.save_pretrained(tmp_path)
    rec = json.loads((tmp_path / "config.json").read_text())["omni_npu_quant"]
    assert rec["layers"]["model.layers.0.self_attn.q_proj"]["label"] == m.model.layers[0].self_attn.q_proj.scheme.label
    fresh = _llama(seed=5)  # other float weights: everything must come from the saved directory
    load_quantized(fresh, tmp_path)
    assert isinstance(fresh.model.layers[1].mlp.down_proj, QuantLinear)
    if scheme == "mxfp4":  # recorded scheme options come back (floor, not the default round)
        assert fresh.model.layers[0].mlp.up_proj.scheme.act_round_mode == "floor"
    assert torch.equal(fresh(ids).logits, y)


def test_state_dict_into_quantized_model_and_errors(tmp_path):
    a, b = _llama(0), _llama(3)
    quantize_(a, "mxfp4")
    quantize_(b, "mxfp4")
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(2))
    b.load_state_dict(a.state_dict())  # plain torch round trip between identically quantized models
    assert torch.equal(a(ids).logits, b(ids).logits)
    sd = a.state_dict()
    sd["model.layers.0.self_attn.q_proj.weight_scale"] = sd["model.layers.0.self_attn.q_proj.weight_scale"][:, :1]
    with pytest.raises(RuntimeError, match="q_proj: state-dict tensor 'weight_scale'"):
        b.load_state_dict(sd)
    with pytest.raises(ValueError, match="plain state dict needs the layer record"):
        load_quantized(torch.nn.Sequential(torch.nn.Linear(64, 64)), {"0.weight": torch.zeros(64, 64)})
    c = _llama(4)
    with pytest.raises(ValueError, match="plain state dict needs the layer record"):
        load_quantized(c, a.state_dict())  # a fresh float model's config carries no record ...
    c.config.omni_npu_quant = a.config.omni_npu_quant  # ... a config saved from the quantized model does
    load_quantized(c, a.state_dict())
    assert torch.equal(c(ids).logits, a(ids).logits)
