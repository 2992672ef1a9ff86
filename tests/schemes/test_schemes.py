"""Schemes: registry, stored tensors (names/dtypes/shapes), weight quantization round trips."""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.numerics.constants import E2M1
from omni_npu_quant.schemes import LABEL_TO_SCHEME, MAIN_SCHEMES, SCHEMES, SchemeValidationError, get_scheme
from omni_npu_quant.numerics.int8 import effective_deq_scale, static_act_params

EXPECTED_SHAPES = {  # (N, K) = (8, 1024)
    "w8a8_dynamic": {"weight": ((8, 1024), torch.int8), "weight_scale": ((8, 1), torch.float32)},
    "w8a16": {"weight": ((8, 1024), torch.int8), "weight_scale": ((8, 1), torch.float32)},
    "mxfp8": {"weight": ((8, 1024), torch.float8_e4m3fn), "weight_scale": ((8, 32), torch.uint8)},
    "mxfp4": {"weight": ((8, 512), torch.uint8), "weight_scale": ((8, 32), torch.uint8)},
    "w4a8_mxfp": {"weight": ((8, 512), torch.uint8), "weight_scale": ((8, 32), torch.uint8)},
    "mxfp4_dual": {"weight": ((8, 512), torch.uint8), "weight_scale": ((8, 32), torch.uint8),
                   "weight_dual_scale": ((8, 2, 1), torch.float32)},
}


def test_registry_names_and_labels():
    assert set(MAIN_SCHEMES) <= set(SCHEMES)
    for label, name in LABEL_TO_SCHEME.items():
        assert get_scheme(label).name == name
    assert get_scheme("mxfp4").act_round_mode == "round"  # vllm-ascend serves W4A4_MXFP4 with "round"
    assert get_scheme("mxfp4_dual").act_round_mode == "rint"
    assert get_scheme("mxfp4", act_round_mode="rint").act_round_mode == "rint"
    with pytest.raises(ValueError, match="unknown scheme 'nope'"):
        get_scheme("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_stored_tensors_and_roundtrip(name, gen):
    s = get_scheme(name)
    w = torch.randn(8, 1024, generator=gen) * 0.05
    t = s.quantize_weight(w, torch.randn(8, generator=gen))
    for key, (shape, dtype) in EXPECTED_SHAPES[name].items():
        assert tuple(t[key].shape) == shape and t[key].dtype == dtype, key
    assert s.validate(t) == (8, 1024)
    wd = s.dequantize_weight(t)
    rel = (wd - w).norm() / w.norm()
    # int8 per-channel: ~0.5%; FP8 E4M3 (3 mantissa bits): ~3%; FP4: ~10%
    bound = {"mxfp8": 0.05}.get(name, {8: 0.01, 4: 0.15}[s.weight_bits])
    assert rel < bound, rel


def test_mx_weight_quantization_is_the_numerics_rule(gen):
    w = torch.randn(4, 96, generator=gen)
    t = get_scheme("mxfp4").quantize_weight(w)
    r = MX.mx_quantize(w, E2M1, "rint", 0)  # weights: rint, OCP floor scales
    assert torch.equal(t["weight"], MX.mx_encode(r.values, E2M1)) and torch.equal(t["weight_scale"], r.codes)


def test_static_act_params_hand_values():
    # scale = (max - min) / 255; offset = round(-min / scale) - 128
    # [-1, 1]: scale = fp32(2/255) = 0.0078431377 (slightly above 2/255 = 0.0078431372...);
    # -min/scale = 127.4999992 -> round 127 -> offset 127 - 128 = -1
    sc, off = static_act_params(-1.0, 1.0)
    assert sc == torch.tensor(2 / 255, dtype=torch.float32).item() and off == -1.0
    # [0, 2.55]: scale 0.01 (fp32 0.0099999998); -min/scale = 0 -> offset -128 (range always includes 0)
    sc, off = static_act_params(0.5, 2.55)
    assert abs(sc - 0.01) < 1e-9 and off == -128.0
    # all-zero range -> scale 1 (no division by zero)
    assert static_act_params(0.0, 0.0) == (1.0, -128.0)


def test_effective_deq_scale_fp19_only_for_fp16():
    d = torch.tensor([1 + 2.0 ** -11], dtype=torch.float32)
    assert effective_deq_scale(d, torch.bfloat16).item() == 1 + 2.0 ** -11
    assert effective_deq_scale(d, torch.float16).item() == 1.0


def test_static_needs_calibration():
    with pytest.raises(ValueError, match="act_min"):
        get_scheme("w8a8_static").quantize_weight(torch.randn(4, 32))


def test_dual_scale_needs_k_multiple_of_512(gen):
    s = get_scheme("mxfp4_dual")
    t = s.quantize_weight(torch.randn(4, 600, generator=gen))
    with pytest.raises(SchemeValidationError, match="multiple of 512"):
        s.validate(t)


def test_dynamic_rejects_nonzero_weight_offset(gen):
    s = get_scheme("w8a8_dynamic")
    t = s.quantize_weight(torch.randn(4, 32, generator=gen))
    t["weight_offset"] = torch.ones(4, 1)
    with pytest.raises(SchemeValidationError, match="'weight_offset'"):
        s.validate(t, where="model.layers.3.mlp.up_proj")


def test_mul_scale_must_be_positive(gen):
    s = get_scheme("mxfp8")
    t = s.quantize_weight(torch.randn(4, 64, generator=gen))
    t["mul_scale"] = torch.zeros(64)
    with pytest.raises(SchemeValidationError, match="'mul_scale'"):
        s.validate(t)


def test_bad_activation_options_refused_at_construction():
    """`--scheme-option act_round_mode=bogus` must fail when the scheme is made, not at the first forward."""
    with pytest.raises(ValueError, match="act_round_mode='bogus'"):
        get_scheme("mxfp4", act_round_mode="bogus")
    with pytest.raises(ValueError, match="for e4m3 elements"):
        get_scheme("mxfp8", act_round_mode="round")  # FP8 activations: rint only (npu_dynamic_mx_quant)
    with pytest.raises(ValueError, match="act_scale_alg=7"):
        get_scheme("w4a8_mxfp", act_scale_alg=7)


def test_quantize_weight_rows_equals_whole(gen):
    """Row-chunked quantization (bounded temporaries in quantize_) stores exactly what the whole layer does."""
    for name, cls in SCHEMES.items():
        s = get_scheme(name)
        if not s.rows_independent:
            continue
        kw = dict(act_min=-1.0, act_max=1.0) if s.needs_calibration else {}
        w, b = torch.randn(100, 1024, generator=gen), torch.randn(100, generator=gen)
        whole, rows = s.quantize_weight(w, b, **kw), s.quantize_weight_rows(w, b, max_elements=7 * 1024, **kw)
        assert whole.keys() == rows.keys(), name
        for key in whole:
            assert torch.equal(whole[key], rows[key]), (name, key)
