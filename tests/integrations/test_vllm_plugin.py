"""The vLLM plugin against the real vLLM 0.33 Python code on CPU (VLLM_TARGET_DEVICE=cpu, gloo).

Every layer type (QKV, merged column, column, row) x every scheme, online from float weights and
from an AscendV1 checkpoint written by our writer, TP=1 in-process (bit-exact vs the reference
backend) and TP=2 in two spawned gloo workers (one spawn for everything).
"""
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
pytest.importorskip("vllm")

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


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_ckpts")
    for case in C.CKPT_SCHEMES:
        C.write_case(root / case, case)
    return root


def test_register_is_idempotent_and_names_are_unique(vllm_tp1):
    import typing

    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
    from vllm.model_executor.layers.quantization import QuantizationMethods

    from omni_npu_quant.integrations.vllm.plugin import register

    builtin = set(typing.get_args(QuantizationMethods))
    taken_elsewhere = {"ascend", "int8", "mxfp8", "mxfp4", "mxfp4_dualscale", "mxfp4_npu", "bitsandbytes", "inc",
                       "auto-round", "auto_round", "svdquant", "torchao"}
    before = list(QUANTIZATION_METHODS)
    register()
    assert list(QUANTIZATION_METHODS) == before
    ours = set(vllm_tp1)
    assert {"omni_npu_quant", "omni_npu_w8a8_dynamic", "omni_npu_mxfp8", "omni_npu_mxfp4", "omni_npu_mxfp4_dual"} <= ours
    assert not ours & (builtin | taken_elsewhere)
    for name in ours:
        assert before.count(name) == 1 and get_quantization_config(name) is vllm_tp1[name]
        assert vllm_tp1[name].from_config({} if name != "omni_npu_quant" else {"model_quant_type": "W8A8"}).get_name() == name


def test_entry_point_as_vllm_loads_it():
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="vllm.general_plugins") if e.name == "omni_npu_quant"]
    assert len(eps) == 1 and eps[0].value == "omni_npu_quant.integrations.vllm.plugin:register"
    assert not [e for e in entry_points(group="vllm.platform_plugins") if "omni_npu_quant" in e.value]
    from vllm.plugins import load_general_plugins
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    load_general_plugins()
    assert "omni_npu_quant" in QUANTIZATION_METHODS and "omni_npu_mxfp4_dual" in QUANTIZATION_METHODS


def test_override_and_config_sources(vllm_tp1, ckpts):
    cfg_cls = vllm_tp1["omni_npu_quant"]
    assert cfg_cls.get_config_filenames() == ["quant_model_description.json"]
    assert cfg_cls.override_quantization_method({"quant_method": "omni_npu_quant"}, None) == "omni_npu_quant"
    assert cfg_cls.override_quantization_method({"quant_method": "fp8"}, None) is None
    assert vllm_tp1["omni_npu_mxfp4"].override_quantization_method({"quant_method": "omni_npu_mxfp4"}, None) == \
        "omni_npu_mxfp4"
    # config.json marker -> the description is read from the model directory
    marker = cfg_cls.from_config({"quant_method": "omni_npu_quant", "description_file": "quant_model_description.json"})
    assert marker.description is None
    marker.maybe_update_config(str(ckpts / "mxfp4"))
    assert marker.description[f"{C.P}.mlp.down_proj.weight"] == "W4A4_MXFP4"
    with pytest.raises(FileNotFoundError):
        cfg_cls.from_config({"quant_method": "omni_npu_quant"}).maybe_update_config(str(ckpts))
    with pytest.raises(ValueError, match="unknown quantization_config key"):
        vllm_tp1["omni_npu_mxfp4"].from_config({"ignore": ["lm_head"]})


@pytest.mark.parametrize("case", C.CKPT_SCHEMES)
def test_checkpoint_layers_tp1_match_reference(vllm_tp1, ckpts, case):
    from omni_npu_quant.integrations.vllm.methods import OmniNpuLinearMethod

    desc = json.loads((ckpts / case / "quant_model_description.json").read_text())
    cfg = vllm_tp1["omni_npu_quant"].from_config(desc)
    cfg.packed_modules_mapping = C.PACKED
    layers = C.build_layers(cfg)
    qkv = layers[f"{C.P}.self_attn.qkv_proj"]
    assert isinstance(qkv.quant_method, OmniNpuLinearMethod) and qkv.omni_loader_name == "weight_loader_v2"
    C.load_checkpoint_into(layers, ckpts / case, cfg)
    xs = C.inputs()
    ref = C.reference_outputs(C.tensor_sets(case), C.base_scheme(case), xs)
    for prefix, layer in layers.items():
        assert torch.equal(layer(xs[prefix]), ref[prefix]), (case, prefix)
    if case == "w8a8_static_i64":  # int64 deq_scale decoded by the wrapped loader, never copied numerically
        from omni_npu_quant.numerics.int8 import int64_deq_scale_to_fp32

        d = layers[f"{C.P}.mlp.down_proj"].deq_scale.data
        raw = C.tensor_sets(case)[f"{C.P}.mlp.down_proj"]["deq_scale"]
        assert raw.dtype == torch.int64 and torch.equal(d, int64_deq_scale_to_fp32(raw))


@pytest.mark.parametrize("scheme", C.ONLINE_SCHEMES)
def test_online_layers_tp1_match_reference(vllm_tp1, scheme):
    from omni_npu_quant.schemes.registry import get_scheme

    cfg = vllm_tp1[f"omni_npu_{scheme}"].from_config({"ignored_layers": ["*.extra_proj"]})
    cfg.packed_modules_mapping = C.PACKED
    layers = C.build_layers(cfg)
    assert type(layers[f"{C.P}.mlp.extra_proj"].quant_method).__name__ == "UnquantizedLinearMethod"
    C.load_float_into(layers)
    sch = get_scheme(scheme)
    sets = {n: sch.quantize_weight(w, b) for n, (w, b) in C.float_weights().items()}
    xs = C.inputs()
    ref = C.reference_outputs(sets, scheme, xs)
    for prefix, layer in layers.items():
        if prefix.endswith("extra_proj"):
            continue
        assert torch.equal(layer(xs[prefix]), ref[prefix]), (scheme, prefix)
        assert layer.weight.dtype != torch.bfloat16  # the float weight was replaced by the stored one


def test_fused_label_and_shard_checks(vllm_tp1, ckpts, tmp_path):
    from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear

    desc = json.loads((ckpts / "mxfp4" / "quant_model_description.json").read_text())
    cfg_cls = vllm_tp1["omni_npu_quant"]
    mixed = dict(desc, **{f"{C.P}.self_attn.k_proj.weight": "W8A8_DYNAMIC"})
    cfg = cfg_cls.from_config(mixed)
    cfg.packed_modules_mapping = C.PACKED
    with pytest.raises(ValueError, match="mixes labels"):
        C.build_layers(cfg)
    floats = dict(desc, **{f"{C.P}.self_attn.{n}.weight": "FLOAT" for n in ("q_proj", "k_proj", "v_proj")})
    cfg = cfg_cls.from_config(floats)
    cfg.packed_modules_mapping = C.PACKED
    qkv = C.build_layers(cfg)[f"{C.P}.self_attn.qkv_proj"]
    assert type(qkv.quant_method).__name__ == "UnquantizedLinearMethod"
    # dual-scale: K per rank must be a multiple of 512 -> refused at create_weights
    dcfg = vllm_tp1["omni_npu_mxfp4_dual"].from_config({})
    with pytest.raises(ValueError, match="multiple of 512"):
        RowParallelLinear(768, 256, bias=False, quant_config=dcfg, prefix="x.down_proj", params_dtype=torch.bfloat16)
    # fused q/k/v with different mul_scale -> error at process_weights_after_loading
    case = "mxfp4_dual"
    desc = json.loads((ckpts / case / "quant_model_description.json").read_text())
    cfg = cfg_cls.from_config(desc)
    cfg.packed_modules_mapping = C.PACKED
    layers = C.build_layers(cfg)
    sets = C.tensor_sets(case)
    layer = layers[f"{C.P}.self_attn.qkv_proj"]
    for sid, n in zip("qkv", ("q_proj", "k_proj", "v_proj")):
        for suf, t in sets[f"{C.P}.self_attn.{n}"].items():
            if suf == "mul_scale" and sid == "v":
                t = t * 2
            p = getattr(layer, suf)
            p.weight_loader(p, t, sid)
    with pytest.raises(ValueError, match="disagree on 'mul_scale'"):
        layer.quant_method.process_weights_after_loading(layer)
    # static: per-tensor input_scale differing across q/k/v -> error
    cfg = cfg_cls.from_config(json.loads((ckpts / "w8a8_static" / "quant_model_description.json").read_text()))
    cfg.packed_modules_mapping = C.PACKED
    layer = QKVParallelLinear(C.H, C.HEAD, C.HEADS, C.KV_HEADS, bias=False, quant_config=cfg,
                              prefix=f"{C.P}.self_attn.qkv_proj", params_dtype=torch.bfloat16)
    sets = C.tensor_sets("w8a8_static")
    for sid, n in zip("qkv", ("q_proj", "k_proj", "v_proj")):
        for suf, t in sets[f"{C.P}.self_attn.{n}"].items():
            if suf == "input_scale" and sid == "k":
                t = t * 1.5
            p = getattr(layer, suf)
            p.weight_loader(p, t, sid)
    with pytest.raises(ValueError, match="disagree on 'input_scale'"):
        layer.quant_method.process_weights_after_loading(layer)


def test_tp2_all_layer_types_all_schemes(ckpts):
    """One spawn of two gloo ranks: column outputs bit-exact vs the reference's columns; row outputs
    (all-reduced) bit-exact vs the bf16 sum of per-rank references on K slices (bias once) and close to
    TP=1 (int8 per-token activation scales are per rank); online int8 row weights equal TP=1's."""
    import torch.multiprocessing as mp

    res_dir = tempfile.mkdtemp(prefix="omni_tp2_")
    port = C.free_port()
    env_before = os.environ.get("VLLM_TARGET_DEVICE")
    mp.start_processes(C.tp_worker, args=(2, port, str(ckpts), res_dir), nprocs=2, join=True, start_method="spawn")
    assert env_before == "cpu"
    for rank in range(2):
        res = json.loads(Path(res_dir, f"rank{rank}.json").read_text())
        assert "error" not in res, res.get("error")
        assert res["global_amax_weight"] and res["global_amax_scale"], rank
        n_cases = len(C.ONLINE_SCHEMES) + len(C.CKPT_SCHEMES)
        layer_results = {k: v for k, v in res.items() if ":" in k}
        assert len(layer_results) == n_cases * len(C.FUSED)
        for key, (kind, val) in layer_results.items():
            if kind == "col":
                assert val is True, (rank, key)
            else:  # bit-exact vs the summed per-rank references, and close to TP=1
                assert val[0] is True, (rank, key, val)
                assert val[1] < 0.08, (rank, key, val)
