"""The torch runtime on real diffusers DiT classes: every scheme quantizes and runs, module queries, round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from omni_npu_quant.integrations.torch import QuantConfig, QuantLinear, load_quantized, plan_quantization, quantize_
from omni_npu_quant.integrations.torch import quantized_tensor_sets
from omni_npu_quant.integrations.torch.module import quantized_state_keys
from omni_npu_quant.models.dit import build_small_dit, call_output, example_call
from omni_npu_quant.schemes.registry import SCHEMES as REGISTERED, get_scheme

from .conftest import CLASSES

# every registered scheme, new ones included; the low-rank (SVD) family decomposes each weight with a full SVD
# at quantization time (tens of seconds per model on a loaded 2-core CPU), so it runs on the Wan class only
LOWRANK = sorted(s for s in REGISTERED if hasattr(get_scheme(s), "svd_lowrank"))
SCHEMES = sorted(s for s in REGISTERED if s not in LOWRANK)
# end-to-end relative L2 vs the float model on these random small models (measured 2026-12-01 far below:
# 8-bit <= 0.011, 4-bit <= 0.11); a broken layout / scale rule gives O(1); unlisted schemes: the 4-bit bound
MAX_REL = {"w8a8_dynamic": 0.05, "w8a8_static": 0.05, "w8a16": 0.05, "mxfp8": 0.08}


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
@pytest.mark.parametrize("scheme", LOWRANK)
def test_every_lowrank_scheme_quantizes_and_runs_on_wan(scheme):
    test_every_scheme_quantizes_and_runs("WanTransformer3DModel", scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("cls", CLASSES)
def test_every_scheme_quantizes_and_runs(cls, scheme):
    model = build_small_dit(cls, seed=1)
    args, kwargs = example_call(model, seed=2)
    with torch.no_grad():
        ref = call_output(model(*args, **kwargs))
    cfg = QuantConfig(scheme=scheme, backend="reference")
    plan = plan_quantization(model, cfg)
    sch = get_scheme(scheme)
    for p in plan:  # shape refusals come from the scheme object, with its reason in the plan
        why = sch.shape_problem(p.out_features, p.in_features)
        if p.quantized:
            assert why is None, p
        elif why is not None and not p.reason.startswith("default float"):
            assert why in p.reason, p
    assert any(p.quantized for p in plan)
    calib = None
    if sch.needs_calibration:  # quantize_'s calib_data: a kwargs dict or a positional tuple per batch
        calib = [args] if args else [kwargs]
    with torch.no_grad():
        quantize_(model, cfg, calib_data=calib)
        out = call_output(model(*args, **kwargs))
    mods = dict(model.named_modules())
    for p in plan:
        assert isinstance(mods[p.name], QuantLinear) == p.quantized, p.name
        if p.quantized:
            assert mods[p.name].scheme.name == sch.name
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out.float()).all()
    assert _rel(out, ref) < MAX_REL.get(scheme, 0.25), _rel(out, ref)


def test_zimage_ffn_k_refused_by_mx_kept_float_with_reason():
    model = build_small_dit("ZImageTransformer2DModel")
    plan = {p.name: p for p in plan_quantization(model, QuantConfig(scheme="mxfp4_dual"))}
    p = plan["layers.0.feed_forward.w2"]  # K = 1365: not a multiple of 32 / 512
    assert p.in_features == 1365 and not p.quantized
    assert p.reason == "kept float: " + get_scheme("mxfp4_dual").shape_problem(512, 1365)
    assert plan["layers.0.feed_forward.w1"].quantized


def test_module_queries_keep_working_with_quantized_embedders():
    """Wan's condition embedder calls next(self.time_embedder.parameters()): a bare StopIteration before."""
    model = build_small_dit("WanTransformer3DModel")
    args, kwargs = example_call(model)
    quantize_(model, QuantConfig(scheme="w8a8_dynamic", apply_defaults=False, backend="reference"))
    te = model.condition_embedder.time_embedder
    assert isinstance(te.linear_1, QuantLinear)
    first = next(te.parameters())
    assert first.is_floating_point() and not first.requires_grad
    lin = te.linear_1
    names = dict(lin.named_parameters())
    assert set(names) == set(lin.tensors) and names["weight"].dtype == torch.int8
    assert not any(p.requires_grad for p in model.parameters() if not p.is_floating_point())
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    # no full-precision copy of the weight on the module
    assert all(t.dtype != torch.bfloat16 or t.numel() < lin.in_features * lin.out_features
               for t in lin.parameters())
    with torch.no_grad():
        y = call_output(model(*args, **kwargs))
    assert torch.isfinite(y.float()).all()
    # .to(): a float cast changes the activation dtype only; stored tensors keep their dtype
    ws = lin.tensors["weight_scale"].dtype
    model.to(torch.float16)
    assert lin.act_dtype == torch.float16 and lin.tensors["weight_scale"].dtype == ws
    assert lin.tensors["weight"].dtype == torch.int8
    # a wrong tensor is never silently loaded into a QuantLinear
    with pytest.raises(RuntimeError, match="linear_1|QuantLinear"):
        lin.load_state_dict({"weight": torch.zeros(3)}, strict=False)


@pytest.mark.parametrize("cls", CLASSES)
def test_save_load_round_trip_identical(cls, tmp_path):
    from omni_npu_quant.checkpoint import write_ascendv1

    src = build_small_dit(cls, seed=1)
    args, kwargs = example_call(src, seed=4)
    quantize_(src, QuantConfig(scheme="mxfp4_dual" if cls != "ZImageTransformer2DModel" else "w4a8_mxfp",
                               backend="reference"))
    qkeys = quantized_state_keys(src)  # the float tensors: everything but the QuantLinear stored sets
    write_ascendv1(tmp_path / "ck", quantized_tensor_sets(src),
                   {k: v for k, v in src.state_dict().items() if k not in qkeys})
    dst = build_small_dit(cls, seed=99)  # other float weights: everything must come from disk
    load_quantized(dst, tmp_path / "ck", backend="reference")
    for n, m in src.named_modules():
        if isinstance(m, QuantLinear):
            d = dst.get_submodule(n)
            assert isinstance(d, QuantLinear) and set(d.tensors) == set(m.tensors)
        elif isinstance(m, nn.Linear):
            assert not isinstance(dst.get_submodule(n), QuantLinear)
    with torch.no_grad():
        assert torch.equal(call_output(dst(*args, **kwargs)), call_output(src(*args, **kwargs)))
