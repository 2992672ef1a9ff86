"""Per-architecture float defaults (one table) and the num_bf16_fallback_layers option."""
from __future__ import annotations

import pytest
from torch import nn

from omni_npu_quant.integrations.selection import SelectionError
from omni_npu_quant.integrations.torch import QuantConfig, plan_quantization
from omni_npu_quant.models.defaults import ARCH_DEFAULTS, fallback_blocks
from omni_npu_quant.models.dit import build_small_dit

from .conftest import CLASSES

EXPECT_FLOAT = {
    "WanTransformer3DModel": ["condition_embedder.time_embedder.linear_1", "condition_embedder.time_proj",
                              "condition_embedder.text_embedder.linear_2", "proj_out"],
    "QwenImageTransformer2DModel": ["time_text_embed.timestep_embedder.linear_1", "img_in", "txt_in",
                                    "transformer_blocks.0.img_mod.1", "transformer_blocks.1.txt_mod.1",
                                    "norm_out.linear", "proj_out"],
    "FluxTransformer2DModel": ["time_text_embed.guidance_embedder.linear_1", "context_embedder", "x_embedder",
                               "transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
                               "single_transformer_blocks.0.norm.linear", "norm_out.linear", "proj_out"],
    "ZImageTransformer2DModel": ["t_embedder.mlp.0", "cap_embedder.1", "all_x_embedder.2-1",
                                 "layers.0.adaLN_modulation.0", "noise_refiner.0.adaLN_modulation.0",
                                 "all_final_layer.2-1.linear", "all_final_layer.2-1.adaLN_modulation.1"],
}
EXPECT_QUANT = {
    "WanTransformer3DModel": ["blocks.0.attn2.to_k", "blocks.1.ffn.net.2"],
    "QwenImageTransformer2DModel": ["transformer_blocks.0.img_mlp.net.0.proj", "transformer_blocks.1.attn.to_add_out"],
    "FluxTransformer2DModel": ["single_transformer_blocks.0.proj_out", "transformer_blocks.0.ff.net.2"],
    "ZImageTransformer2DModel": ["layers.1.attention.to_q", "context_refiner.0.feed_forward.w1"],
}


@pytest.mark.parametrize("cls", CLASSES)
def test_defaults_keep_embedders_modulation_and_output_float(cls):
    model = build_small_dit(cls)
    plan = {p.name: p for p in plan_quantization(model, QuantConfig(scheme="w8a8_dynamic"))}
    for n in EXPECT_FLOAT[cls]:
        assert not plan[n].quantized and plan[n].reason.startswith("default float"), plan[n]
    for n in EXPECT_QUANT[cls]:
        assert plan[n].quantized, plan[n]
    off = {p.name: p for p in plan_quantization(model, QuantConfig(scheme="w8a8_dynamic", apply_defaults=False))}
    assert all(off[n].quantized for n in EXPECT_FLOAT[cls])
    # a user's explicit per-layer choice wins over a default
    mine = {p.name: p for p in plan_quantization(model, QuantConfig(
        scheme="w8a8_dynamic", layer_schemes={EXPECT_FLOAT[cls][0]: "mxfp8"}))}
    assert mine[EXPECT_FLOAT[cls][0]].scheme == "mxfp8"


def test_every_table_entry_has_a_reason_and_matches_its_class():
    from omni_npu_quant.integrations.selection import match_patterns

    for cls, entries in ARCH_DEFAULTS.items():
        assert entries and all(e.reason for e in entries)
        if cls == "*":
            continue
        names = [n for n, m in build_small_dit(cls).named_modules() if isinstance(m, nn.Linear)]
        for e in entries:
            if e.pattern == "condition_embedder.image_embedder":  # Wan I2V only
                continue
            assert match_patterns([e.pattern], names, allow_unmatched=True)[e.pattern], (cls, e.pattern)


def test_lm_head_float_by_default_for_any_model():
    from omni_npu_quant.models.tiny import build_tiny

    plan = {p.name: p for p in plan_quantization(build_tiny("llama", layers=1), QuantConfig(scheme="mxfp4"))}
    assert not plan["lm_head"].quantized and "lm_head" in plan["lm_head"].reason


def test_bf16_fallback_first_last_both_over_flux_block_sequence():
    model = build_small_dit("FluxTransformer2DModel")  # one double-stream block, then one single-stream block
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    first = fallback_blocks(model, names, 1, "first")
    last = fallback_blocks(model, names, 1, "last")
    both = fallback_blocks(model, names, 1, "both")
    assert first and all(n.startswith("transformer_blocks.0.") for n in first)
    assert last and all(n.startswith("single_transformer_blocks.0.") for n in last)
    assert set(both) == set(first) | set(last)
    plan = {p.name: p for p in plan_quantization(model, QuantConfig(scheme="mxfp8", num_bf16_fallback_layers=1))}
    assert not plan["transformer_blocks.0.attn.to_q"].quantized
    assert "num_bf16_fallback_layers=1" in plan["transformer_blocks.0.attn.to_q"].reason
    assert plan["single_transformer_blocks.0.attn.to_q"].quantized


def test_bf16_fallback_wan_last_blocks_and_errors():
    model = build_small_dit("WanTransformer3DModel")
    plan = {p.name: p for p in plan_quantization(model, QuantConfig(
        scheme="mxfp8", num_bf16_fallback_layers=1, bf16_fallback_side="last"))}
    assert plan["blocks.0.attn1.to_q"].quantized and not plan["blocks.1.attn1.to_q"].quantized
    with pytest.raises(ValueError, match="bf16_fallback_side"):
        QuantConfig(num_bf16_fallback_layers=1, bf16_fallback_side="middle")
    with pytest.raises(ValueError, match=">= 0"):
        QuantConfig(num_bf16_fallback_layers=-1)

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 64)

    with pytest.raises(SelectionError, match="numbered block"):
        plan_quantization(Flat(), QuantConfig(scheme="mxfp8", num_bf16_fallback_layers=2))
