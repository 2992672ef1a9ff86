"""vLLM-Omni's quantization_config keys on our vLLM methods, and a quantized pipeline layout vLLM resolves to
``omni_npu_quant`` (vLLM 0.33's own ModelConfig detection and ``get_quant_config``, VLLM_TARGET_DEVICE=cpu).

vLLM-Omni itself is not installed here: its constructor path (``build_quantization_config`` with a ``method``
dict -> ``cls(**rest)``; vllm-project/vllm-omni ``vllm_omni/quantization/factory.py``) is reproduced by calling
the class with the same keyword arguments.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def methods():
    from omni_npu_quant.integrations.vllm.plugin import register, registered_methods

    register()
    return registered_methods()


def test_online_config_takes_vllm_omni_keys(methods):
    cls = methods["omni_npu_mxfp4"]
    cfg = cls.from_config({"method": "omni_npu_mxfp4", "ignored_layers": ["img_mlp", "blocks.5.attn1.to_out.0"],
                           "num_bf16_fallback_layers": 2})
    assert cfg.keep_first_blocks == 2
    assert cfg.is_ignored("transformer_blocks.7.img_mlp.net.2")  # bare module name, as vLLM-Omni's tables write it
    assert not cfg.is_ignored("transformer_blocks.7.txt_mlp.net.2")
    assert not cfg.is_ignored("transformer_blocks.7.img_mlpx.net.2")
    assert cfg.is_ignored("blocks.5.attn1.to_out.0") and not cfg.is_ignored("blocks.5.attn1.to_q")
    assert cfg.is_ignored("blocks.1.attn1.to_q") and not cfg.is_ignored("blocks.2.attn1.to_q")  # leading 2 blocks
    # vLLM-Omni's constructor path (a dict with "method": the rest as keyword arguments)
    direct = cls(ignored_layers=["feed_forward"], num_bf16_fallback_layers=1)
    assert direct.is_ignored("layers.3.feed_forward.w2") and direct.keep_first_blocks == 1
    assert cls(modules_to_not_convert=["proj_out"]).is_ignored("proj_out")
    with pytest.raises(ValueError, match="aliases and must agree"):
        cls.from_config({"method": "omni_npu_mxfp4", "quant_method": "mxfp4"})
    with pytest.raises(ValueError, match="method='mxfp4_dualscale'"):
        cls.from_config({"method": "mxfp4_dualscale"})
    with pytest.raises(ValueError, match="disagree"):
        cls.from_config({"keep_first_blocks": 1, "num_bf16_fallback_layers": 5})
    with pytest.raises(ValueError, match="is_checkpoint_serialized: serialized checkpoints are served by"):
        cls(is_checkpoint_serialized=True)
    with pytest.raises(ValueError, match="w4a8_fallback_steps: per-denoise-step"):
        cls.from_config({"w4a8_fallback_steps": [0, 1]})
    with pytest.raises(ValueError, match=r"unknown quantization_config key\(s\) \['bogus'\]"):
        cls(bogus=1)
    assert cls.override_quantization_method({"method": "omni_npu_mxfp4"}, None) == "omni_npu_mxfp4"


@pytest.fixture(scope="module")
def served(flux_dir, tmp_path_factory):
    """quantize --model <pipeline> (every transformer -> OUT/transformer/), then mark it for serving."""
    from omni_npu_quant.cli.main import main
    from omni_npu_quant.integrations.vllm.layout import mark_for_serving

    out = tmp_path_factory.mktemp("served") / "q"
    assert main(["-q", "quantize", "--model", str(flux_dir), "--scheme", "w8a8_dynamic", "--out", str(out)]) == 0
    written = mark_for_serving(out)
    assert [p.parent.name for p in written] == ["transformer"]
    return out


def test_pipeline_layout_resolves_to_our_method_in_vllm(methods, served):
    from vllm.config import LoadConfig, ModelConfig
    from vllm.model_executor.model_loader.weight_utils import get_quant_config

    cfg_json = json.loads((served / "transformer" / "config.json").read_text())
    qc = cfg_json["quantization_config"]
    assert cfg_json["_class_name"] == "FluxTransformer2DModel" and qc["quant_method"] == "omni_npu_quant"
    assert qc["description"]["transformer_blocks.0.ff.net.2.weight"] == "W8A8_DYNAMIC"
    # vLLM 0.33's detection: every registered method's override_quantization_method, in vLLM's order
    mc = SimpleNamespace(quantization=None, model_arch_config=SimpleNamespace(quantization_config=qc),
                         hf_config=SimpleNamespace(quantization_config=qc), allow_deprecated_quantization=False,
                         quantization_config=None, model=str(served / "transformer"), hf_overrides={})
    ModelConfig._verify_quantization(mc)
    assert mc.quantization == "omni_npu_quant"
    cfg = get_quant_config(mc, LoadConfig())
    assert type(cfg) is methods["omni_npu_quant"]
    assert cfg.label_for("transformer_blocks.0.ff.net.2") == "W8A8_DYNAMIC"
    assert cfg.label_for("proj_out") is None  # a per-architecture float default: not in the description
    # an explicit, different --quantization is refused by vLLM itself
    mc2 = SimpleNamespace(**{**mc.__dict__, "quantization": "omni_npu_mxfp4"})
    with pytest.raises(ValueError, match="does not match"):
        ModelConfig._verify_quantization(mc2)


def test_pipeline_layout_through_vllm_omni_constructor_path(methods, served):
    qc = json.loads((served / "transformer" / "config.json").read_text())["quantization_config"]
    cls = methods["omni_npu_quant"]
    rest = {k: v for k, v in qc.items() if k != "quant_method"}  # resolve_quantization_config_from_disk
    cfg = cls(**rest)
    assert cfg.label_for("single_transformer_blocks.0.proj_mlp") == "W8A8_DYNAMIC"
    # vLLM-Omni's offline convention: config.json ignored_layers lists the BF16 layers -> must be float here
    assert cls(**rest, ignored_layers=["proj_out", "norm_out"]).label_for("proj_out") is None
    bad = cls(**rest, ignored_layers=["ff"])
    with pytest.raises(ValueError, match="stores it quantized"):
        bad.label_for("transformer_blocks.0.ff.net.2")
    with pytest.raises(ValueError, match="num_bf16_fallback_layers=5: a quantized checkpoint already decides"):
        cls(**rest, num_bf16_fallback_layers=5)
    with pytest.raises(ValueError, match="w4a8_fallback_layers"):
        cls.from_config({**qc, "w4a8_fallback_layers": ["x"]})
    # the writer's marker alone (description read from the directory, vLLM's maybe_update_config)
    marker = cls.from_config({k: v for k, v in qc.items() if k != "description"})
    assert marker.description is None
    marker.maybe_update_config(str(served / "transformer"))
    assert marker.label_for("transformer_blocks.0.ff.net.2") == "W8A8_DYNAMIC"


def test_mark_for_serving_refuses_a_foreign_quantization_config(served, tmp_path):
    import shutil

    from omni_npu_quant.integrations.vllm.layout import main as layout_main
    from omni_npu_quant.models.loading import ModelLoadError

    from omni_npu_quant.integrations.vllm.layout import mark_for_serving

    d = tmp_path / "q"
    shutil.copytree(served, d)
    p = d / "transformer" / "config.json"
    cfg = json.loads(p.read_text())
    cfg["quantization_config"] = {"quant_method": "fp8"}
    p.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="quant_method='fp8'"):
        mark_for_serving(d)
    assert layout_main([str(tmp_path / "nothing")]) == 2


def test_a_description_less_config_is_replaced_from_disk_as_vllm_omni_does(methods, served):
    """vLLM-Omni's resolve_quantization_config_from_disk rebuilds when the disk marks the checkpoint serialized
    and the active config does not: both flags are what our classes report."""
    qc = json.loads((served / "transformer" / "config.json").read_text())["quantization_config"]
    cls = methods["omni_npu_quant"]
    user = cls()  # Omni(..., quantization_config={"method": "omni_npu_quant"})
    assert qc["is_checkpoint_serialized"] is True and user.is_checkpoint_serialized is False
    disk = cls(**{k: v for k, v in qc.items() if k != "quant_method"})
    assert disk.is_checkpoint_serialized is True
    with pytest.raises(ValueError, match="is_checkpoint_serialized=False"):
        cls(is_checkpoint_serialized=False)
