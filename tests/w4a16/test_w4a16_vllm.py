"""W4A16 through the vLLM plugin (real vLLM 0.33 Python code on CPU, TP=1): an AscendV1 W4A16 checkpoint
(written by our writer, or converted from a GPTQ / AutoRound checkpoint) on every layer type of the
plugin tests' block, bit-exact against the reference backend; and who serves a GPTQ / AutoRound
checkpoint directory when nobody asks (vLLM's own methods: ``auto_gptq`` for ``gptq``, ``inc`` for
``auto-round``; ``omni_npu_quant`` never claims them)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
pytest.importorskip("vllm")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integrations"))

import vllm_cases as C  # noqa: E402


@pytest.fixture(scope="module")
def vllm_tp1():
    from vllm.config import VllmConfig, set_current_vllm_config

    from omni_npu_quant.integrations.vllm.plugin import register, registered_methods

    register()
    with set_current_vllm_config(VllmConfig()):
        from vllm.distributed import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            C.init_dist(1, 0, C.free_port())
        yield registered_methods()


def _sets(gs, sym):
    from omni_npu_quant.schemes import get_scheme

    s = get_scheme("w4a16", group_size=gs, symmetric=sym)
    return {name: s.quantize_weight(w, b) for name, (w, b) in C.float_weights(seed=gs).items()}


@pytest.mark.parametrize("gs,sym", [(128, True), (64, False), (0, False)])
def test_w4a16_checkpoint_layers_match_reference(vllm_tp1, tmp_path, gs, sym):
    from omni_npu_quant.checkpoint import write_ascendv1
    from omni_npu_quant.integrations.vllm.methods import OmniNpuLinearMethod

    sets = _sets(gs, sym)
    d = write_ascendv1(tmp_path / "ck", {n: ("W4A16", t) for n, t in sets.items()},
                       {f"{C.P}.input_layernorm.weight": torch.ones(C.H, dtype=torch.bfloat16)})
    desc = json.loads((d / "quant_model_description.json").read_text())
    assert desc["group_size"] == gs
    cfg = vllm_tp1["omni_npu_quant"].from_config(desc)
    cfg.packed_modules_mapping = C.PACKED
    layers = C.build_layers(cfg)
    assert all(isinstance(layer.quant_method, OmniNpuLinearMethod) for layer in layers.values())
    C.load_checkpoint_into(layers, d, cfg)
    xs = C.inputs()
    ref = C.reference_outputs(sets, "w4a16", xs)
    for prefix, layer in layers.items():
        assert layer.omni_prepared.kernel_name == "reference.w4a16"
        assert torch.equal(layer(xs[prefix]), ref[prefix]), prefix


def test_gptq_and_autoround_dirs_go_to_vllms_own_methods(vllm_tp1):
    from vllm.model_executor.layers.quantization import get_quantization_config

    ours = vllm_tp1["omni_npu_quant"]
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
    ar = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True,
          "packing_format": "auto_round:auto_gptq"}
    for qc in (gptq, ar):
        assert ours.override_quantization_method(qc, None) is None
        assert ours.override_quantization_method(qc, "omni_npu_quant") is None
    assert get_quantization_config("gptq").override_quantization_method(gptq, None) == "auto_gptq"
    assert get_quantization_config("inc").override_quantization_method(ar, None) == "inc"


def test_converted_autoround_checkpoint_loads(ar, tmp_path):
    from omni_npu_quant.checkpoint import load_checkpoint
    from omni_npu_quant.checkpoint.gptq import convert_to_ascendv1

    src = ar["rtn_asym_g64_native"]
    out = convert_to_ascendv1(src, tmp_path / "ascendv1")
    a, b = load_checkpoint(src), load_checkpoint(out)
    assert b.format == "ascendv1" and sorted(a.layers) == sorted(b.layers)
    for p, e in a.layers.items():
        assert b.layers[p].label == e.label
        for s, t in e.tensors.items():
            u = b.layers[p].tensors[s]
            assert torch.equal(u.to(t.dtype), t) and torch.equal(u.double(), t.double()), (p, s)  # lossless
    desc = json.loads((out / "quant_model_description.json").read_text())
    assert desc["group_size"] == 64 and "quantization_config" not in json.loads((out / "config.json").read_text())
