"""The real producer as the oracle: checkpoints written by auto-round 0.16 on this CPU, offline
(``producers.VARIANTS``: RTN ``iters=0`` symmetric g32, asymmetric g64 in the ``auto_round`` packing and
g128 in ``auto_round:gptqmodel``, its GPTQ export per channel, a tuned ``iters=2`` run on ``dataset=[texts]``,
a diffusers ``WanTransformer3DModel``; plus act-order GPTQ in the documented format).

Oracle: auto-round's own dequantization (its torch ``QuantLinear`` on the stored buffers).  Our weights
and reference forward must match it within 1e-3 relative; the transformers / diffusers model loaded
with ``load_quantized`` runs on reference, npu-sim:A2 and npu-sim:A5; ``inspect`` and ``parity`` work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omni_npu_quant.backends.registry import get_backend
from omni_npu_quant.checkpoint import load_checkpoint
from omni_npu_quant.integrations.torch.api import load_quantized

LLAMA = ["rtn_sym_g32", "rtn_asym_g64_native", "rtn_asym_g128_gptqmodel", "gptq_export_pc", "tuned_sym_g128"]
ALL = LLAMA + ["dit_rtn_g64", "actorder_v1", "actorder_v2"]
EXPECT = {  # what each auto-round output declares (format, packing) and holds
    "rtn_sym_g32": ("auto-round", "auto_round:auto_gptq", {"W4A16"}),
    "rtn_asym_g64_native": ("auto-round", "auto_round", {"W4A16", "W8A16"}),  # lm_head 8-bit (extra_config)
    "rtn_asym_g128_gptqmodel": ("auto-round", "auto_round:gptqmodel", {"W4A16"}),
    "gptq_export_pc": ("gptq", "gptq", {"W4A16"}),
    "tuned_sym_g128": ("auto-round", "auto_round:auto_gptq", {"W4A16"}),
    "dit_rtn_g64": ("auto-round", "auto_round:auto_gptq", {"W4A16"}),
}


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("tag", ALL)
def test_matches_autoround_dequantization(ar, tag):
    d = ar[tag]
    ck = load_checkpoint(d)
    oracle = load_file(str(d / "oracle.safetensors"))
    assert sorted(ck.layers) == sorted(oracle) and not ck.warnings
    if tag in EXPECT:
        fmt, packing, labels = EXPECT[tag]
        assert (ck.format, ck.description["packing_format"]) == (fmt, packing)
        assert {e.label for e in ck.layers.values()} == labels
    ref = get_backend("reference")
    gen = torch.Generator().manual_seed(0)
    for p, e in ck.layers.items():
        w = e.scheme().dequantize_weight(e.tensors)
        assert _rel(w, oracle[p]) < 1e-3, p  # auto-round rounds (u - z) * s to fp16; we keep fp32
        x = torch.randn(4, e.k, generator=gen)
        y = ref.apply(ref.prepare(e.scheme(), e.tensors, torch.float32), x)
        assert _rel(y, x @ oracle[p].t() + (e.tensors["bias"].float() if "bias" in e.tensors else 0)) < 1e-3, p
    if tag.startswith("actorder"):
        exact = load_file(str(d / "exact.safetensors"))
        assert all(torch.equal(ck.layers[p].scheme().dequantize_weight(ck.layers[p].tensors), exact[p]) for p in exact)


def _llama(d: Path, dtype):
    from omni_npu_quant.models.loading import model_from_config

    return model_from_config(json.loads((d / "config.json").read_text()), dtype=dtype, where=str(d / "config.json"))


def _oracle_model(d: Path, ck, build, dtype=torch.float32):
    """The float model with auto-round's dequantized weights (and the checkpoint's float tensors)."""
    m = build(d, dtype)
    oracle = load_file(str(d / "oracle.safetensors"))
    sd = m.state_dict()
    with torch.no_grad():
        for k, t in ck.float_tensors.items():
            sd[k].copy_(t)
        mods = dict(m.named_modules())
        for p, w in oracle.items():
            mods[p].weight.copy_(w)
            if "bias" in ck.layers[p].tensors:
                mods[p].bias.copy_(ck.layers[p].tensors["bias"])
    return m


@pytest.mark.parametrize("tag", ["rtn_sym_g32", "rtn_asym_g64_native", "tuned_sym_g128"])
def test_llama_runs_on_every_backend(ar, tag):
    d = ar[tag]
    ck = load_checkpoint(d)
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = _oracle_model(d, ck, _llama)(input_ids=ids).logits
        for be, dtype, tol in (("reference", torch.float32, 1e-3), ("npu-sim:A2", torch.bfloat16, 5e-2),
                               ("npu-sim:A5", torch.bfloat16, 5e-2)):
            m = load_quantized(_llama(d, dtype), d, backend=be)
            kernels = {mod.prepared.kernel_name for mod in m.modules() if hasattr(mod, "prepared")}
            assert kernels == ({"reference.w4a16"} | ({"reference.weight_only"} if "asym_g64" in tag else set())
                               if be == "reference" else
                               {"npu.w4a16"} | ({"npu.w8a16"} if "asym_g64" in tag else set())), kernels
            got = m(input_ids=ids).logits
            assert torch.isfinite(got).all() and _rel(got, want) < tol, (be, _rel(got, want))


def test_tuned_run_recorded(ar):
    from producers import quant_config

    qc = quant_config(ar["tuned_sym_g128"])
    assert qc["iters"] == 2 and qc["quant_method"] == "auto-round"


def _dit(d: Path, dtype):
    from omni_npu_quant.models.loading import model_from_config

    return model_from_config(json.loads((d / "config.json").read_text()), dtype=dtype, where=str(d / "config.json"))


def test_diffusers_dit_runs_on_every_backend(ar):
    from omni_npu_quant.models.dit import call_output, example_call

    d = ar["dit_rtn_g64"]
    ck = load_checkpoint(d)
    ref_m = _oracle_model(d, ck, _dit)
    args, kw = example_call(ref_m, seed=1, dtype=torch.float32)
    with torch.no_grad():
        want = call_output(ref_m(*args, **kw))
        for be, dtype, tol in (("reference", torch.float32, 1e-3), ("npu-sim:A2", torch.bfloat16, 5e-2),
                               ("npu-sim:A5", torch.bfloat16, 5e-2)):
            m = load_quantized(_dit(d, dtype), d, backend=be)
            a2 = tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
            k2 = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
            got = call_output(m(*a2, **k2))
            assert torch.isfinite(got).all() and _rel(got, want) < tol, (be, _rel(got, want))


def test_inspect_and_parity_cli(ar, tmp_path, capsys):
    from omni_npu_quant.cli.main import main

    d = ar["rtn_sym_g32"]
    assert main(["inspect", str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["valid"] and info["format"] == "auto-round" and len(info["layers"]) == 14
    assert {r["label"] for r in info["layers"]} == {"W4A16"}
    # a diffusers pipeline whose transformer/ is the auto-round DiT
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(ar["dit_rtn_g64"], pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline",
                                                       "transformer": ["diffusers", "WanTransformer3DModel"]}))
    assert main(["inspect", str(pipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "auto-round"
    out = tmp_path / "par"
    rc = main(["parity", "--checkpoint", str(d), "--backends", "reference,npu-sim:A2,npu-sim:A5", "--no-plot",
               "--repeat", "1", "--seq", "16", "--batch", "1", "--fail-on", "smoke", "--out", str(out)])
    res = json.loads((out / "parity.json").read_text())
    assert rc == 0, (out / "parity.md").read_text()[:3000]
    assert "auto-round" in res["source"]["description"]
