"""One loader for model directories: pipeline / diffusers / transformers, class from config, stored dtype kept."""
from __future__ import annotations

import json

import pytest
import torch

from omni_npu_quant.models.loading import (DIFFUSERS_MODEL, DIFFUSERS_PIPELINE, TRANSFORMERS, ModelLoadError,
                                           detect, load_components, load_dir, model_from_config,
                                           pipeline_transformers, stored_dtype)


def test_diffusers_model_dir_keeps_stored_bf16_and_class(dit_dirs):
    d = dit_dirs["QwenImageTransformer2DModel"]
    assert detect(d) == DIFFUSERS_MODEL and stored_dtype(d) == torch.bfloat16
    ld = load_dir(d)
    assert type(ld.model).__name__ == "QwenImageTransformer2DModel" and ld.dtype == torch.bfloat16
    assert ld.model.img_in.weight.dtype == torch.bfloat16  # diffusers alone would build fp32 here
    assert load_dir(d, dtype=torch.float32).model.img_in.weight.dtype == torch.float32


def test_wan_keep_in_fp32_modules_stay_fp32(dit_dirs):
    m = load_dir(dit_dirs["WanTransformer3DModel"]).model
    assert m.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert m.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # _keep_in_fp32_modules


def test_pipeline_dir_lists_both_wan_experts(wan_pipeline_dir):
    assert detect(wan_pipeline_dir) == DIFFUSERS_PIPELINE
    assert pipeline_transformers(wan_pipeline_dir) == ["transformer", "transformer_2"]
    comps = load_components(wan_pipeline_dir)
    assert list(comps) == ["transformer", "transformer_2"]
    w1 = comps["transformer"].model.blocks[0].attn1.to_q.weight
    w2 = comps["transformer_2"].model.blocks[0].attn1.to_q.weight
    assert w1.dtype == torch.bfloat16 and not torch.equal(w1, w2)
    with pytest.raises(ModelLoadError, match="is a diffusers pipeline"):
        load_dir(wan_pipeline_dir)


def test_transformers_encoder_stays_an_encoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    transformers.BertModel(cfg).to(torch.bfloat16).save_pretrained(str(tmp_path / "bert"))
    assert detect(tmp_path / "bert") == TRANSFORMERS
    ld = load_dir(tmp_path / "bert")
    assert type(ld.model).__name__ == "BertModel" and ld.dtype == torch.bfloat16
    assert not any("lm_head" in n or "cls." in n for n, _ in ld.model.named_modules())
    m = model_from_config(json.loads((tmp_path / "bert" / "config.json").read_text()), dtype=torch.float32)
    assert type(m).__name__ == "BertModel"
    from omni_npu_quant.cli.main import main

    assert main(["quantize", "--model", str(tmp_path / "bert"), "--scheme", "w8a8_dynamic", "--out",
                 str(tmp_path / "q")]) == 0
    from omni_npu_quant.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "q")
    assert "encoder.layer.0.attention.self.query" in ck.layers and not any("cls." in k for k in ck.float_tensors)
    assert json.loads((tmp_path / "q" / "config.json").read_text())["architectures"] == ["BertModel"]
    fresh = transformers.BertModel(cfg).to(torch.bfloat16)
    from omni_npu_quant.integrations.torch import load_quantized

    load_quantized(fresh, tmp_path / "q", backend="reference")  # loads back into the encoder class


def test_errors_name_the_directory_and_what_is_missing(tmp_path):
    with pytest.raises(ModelLoadError, match=r"nothere.*not a directory"):
        detect(tmp_path / "nothere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty: no config.json .* no model_index.json"):
        detect(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    with pytest.raises(ModelLoadError, match=r"noweights: config.json but no weights"):
        load_dir(tmp_path / "noweights")
    (tmp_path / "badclass").mkdir()
    (tmp_path / "badclass" / "config.json").write_text(json.dumps({"_class_name": "NoSuchTransformer"}))
    (tmp_path / "badclass" / "x.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"badclass/x.safetensors: truncated safetensors file"):
        load_dir(tmp_path / "badclass")
    with pytest.raises(ModelLoadError, match=r"badclass.*no class 'NoSuchTransformer'"):
        load_dir(tmp_path / "badclass", dtype=torch.bfloat16)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "X"]}))
    with pytest.raises(ModelLoadError, match=r"pipe: model_index.json lists 'transformer' but transformer/config"):
        pipeline_transformers(tmp_path / "pipe")
    (tmp_path / "pipe2").mkdir()
    (tmp_path / "pipe2" / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(ModelLoadError, match=r"pipe2/model_index.json lists no 'transformer'"):
        pipeline_transformers(tmp_path / "pipe2")
