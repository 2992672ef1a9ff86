"""msModelSlim-format checkpoints behave identically across backends.

* a mixed-scheme AscendV1 checkpoint written by ``omni_npu_quant.checkpoint.write_ascendv1`` from
  the tiny Llama (int8 static + dynamic, MXFP8, MXFP4, dual-scale with ``mul_scale``);
* a genuine msModelSlim 26.1.0 W8A8 (static, bf16) checkpoint generated on CPU with the
  checkpoint tests' generator (``tests/checkpoint/msms_gen.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from omni_npu_quant.models.tiny import build_tiny, tiny_inputs
from omni_npu_quant.parity import build_source, resolve_backends, run_parity
from omni_npu_quant.parity.source import capture_linear_io
from omni_npu_quant.schemes.registry import get_scheme

from conftest import PRESENT

CPU_BACKENDS = [b for b in PRESENT if b in ("reference", "npu-sim:A2", "npu-sim:A5")]  # A3 shares A2's fallbacks
PLAN = [  # per layer index: suffix -> scheme (fused siblings q/k/v and gate/up share a scheme)
    {"self_attn.q_proj": "w8a8_dynamic", "self_attn.k_proj": "w8a8_dynamic", "self_attn.v_proj": "w8a8_dynamic",
     "self_attn.o_proj": "mxfp8", "mlp.gate_proj": "mxfp4_dual", "mlp.up_proj": "mxfp4_dual",
     "mlp.down_proj": "w8a8_static"},
    {"self_attn.q_proj": "w8a8_static", "self_attn.k_proj": "w8a8_static", "self_attn.v_proj": "w8a8_static",
     "self_attn.o_proj": "w8a8_dynamic", "mlp.gate_proj": "mxfp4", "mlp.up_proj": "mxfp4",
     "mlp.down_proj": "mxfp8"},
]
SMOOTHED = ("mlp.gate_proj", "mlp.up_proj")  # dual-scale layers of block 0 carry one shared mul_scale


@pytest.fixture(scope="module")
def mixed_ckpt(tmp_path_factory):
    from omni_npu_quant.checkpoint import write_ascendv1

    model = build_tiny("llama", seed=0)
    gen = torch.Generator().manual_seed(7)
    names = [f"model.layers.{i}.{suf}" for i, plan in enumerate(PLAN) for suf in plan]
    xs, _, _ = capture_linear_io(model, tiny_inputs("llama", batch=1, seq=8, seed=1), names)  # static calibration
    layers, qnames = {}, set()
    for i, plan in enumerate(PLAN):
        smooth = (torch.rand(512, generator=gen) + 0.5).to(torch.float32)
        for suf, sname in plan.items():
            name = f"model.layers.{i}.{suf}"
            w = dict(model.named_modules())[name].weight.detach()
            sch = get_scheme(sname)
            calib = {"act_min": float(xs[name].min()), "act_max": float(xs[name].max())} if sname == "w8a8_static" else {}
            if sname == "mxfp4_dual" and suf in SMOOTHED:  # smoothing: (x * s) @ (W / s).T
                t = sch.quantize_weight((w.float() / smooth).to(w.dtype))
                t["mul_scale"] = smooth.clone()  # the writer refuses tensors that share memory
            else:
                t = sch.quantize_weight(w, **calib)
            layers[name] = (sch.label, t)
            qnames.add(name + ".weight")
    floats = {k: v for k, v in model.state_dict().items() if k not in qnames}
    out = tmp_path_factory.mktemp("ck") / "tiny_mixed"
    write_ascendv1(out, layers, floats, config=dict(model.config))
    return out


def test_written_checkpoint_identical_across_cpu_backends(mixed_ckpt):
    src = build_source(checkpoint=str(mixed_ckpt), seq=8)
    assert len(src.layers) == 14 and src.model is not None
    assert src.float_reference.startswith("checkpoint weights dequantized")
    rep = run_parity(src, resolve_backends(CPU_BACKENDS), repeat=0)
    assert rep["verdict"]["strict"]["pass"], rep["verdict"]["strict"]["failures"][:3]
    seen = set()
    for L in rep["layers"]:
        seen.add(L["scheme"])
        for b in CPU_BACKENDS[1:]:
            r = L["results"][b]
            if r["status"] != "ok":
                continue
            if r["quant"] is None:  # activations kept in float by this kernel (MX on A2/A3; W8A16)
                assert r.get("quant_note") or L["scheme"] == "w8a16", (L["name"], b)
            else:
                assert r["quant"]["identical"], (L["name"], b)
            if L["exactness"] == "E0":  # int8: identical outputs on every CPU backend
                assert r["vs_reference"]["identical"], (L["name"], b, r["vs_reference"])
    assert seen == {v for plan in PLAN for v in plan.values()}
    # "vs float" here is activation quantization only (weights are the dequantized checkpoint)
    assert rep["end_to_end"]["reference"]["vs_float"]["cosine"] > 0.9


def test_checkpoint_with_float_model(mixed_ckpt):
    """--checkpoint plus --model: the float side is the original model, layers from the checkpoint."""
    src = build_source(checkpoint=str(mixed_ckpt), model="tiny-llama", seq=8, layers="model.layers.1.*")
    assert len(src.layers) == 7 and src.float_reference.startswith("float model")
    rep = run_parity(src, resolve_backends(["reference"]), repeat=0)
    assert rep["verdict"]["smoke"]["pass"], rep["verdict"]["smoke"]["failures"][:3]


@pytest.fixture(scope="module")
def msms_w8a8(tmp_path_factory):
    try:
        import msmodelslim  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        pytest.fail(f"msmodelslim==26.1.0 and transformers are required for this test ({e})", pytrace=False)
    sys.path.insert(0, str(Path(__file__).parents[1] / "checkpoint"))
    import msms_gen

    d = tmp_path_factory.mktemp("msms_w8a8")
    model = msms_gen.make_tiny_llama(d / "model", torch.bfloat16, hidden=64, inter=128, layers=1, heads=4, kv_heads=2)
    cfg = msms_gen.write_config(d / "cfg.yaml", "w8a8")
    return model, msms_gen.quantize(model, d / "out", cfg)


def test_real_msmodelslim_checkpoint_identical_across_backends(msms_w8a8):
    model_dir, ckpt = msms_w8a8
    src = build_source(checkpoint=str(ckpt), model=str(model_dir), seq=8)
    assert len(src.layers) >= 7 and {e.scheme.name for e in src.layers.values()} == {"w8a8_static"}
    rep = run_parity(src, resolve_backends(CPU_BACKENDS), repeat=0)
    assert rep["verdict"]["strict"]["pass"], rep["verdict"]["strict"]["failures"][:3]
    for L in rep["layers"]:
        for b in CPU_BACKENDS[1:]:
            assert L["results"][b]["vs_reference"]["identical"], (L["name"], b)
