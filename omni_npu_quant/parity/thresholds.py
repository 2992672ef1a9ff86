"""The documented pass/fail thresholds of ``omni-npu-quant parity`` (docs/parity.md explains each).

Two tiers:

* ``smoke`` — the backend runs and agrees with the reference loosely: quantizers almost
  byte-identical, layer outputs within 1% (relative L2) of the reference, end to end at most 25%
  (+0.02) further from the float model than the reference is, and the quantized model still
  resembles the float model.
* ``strict`` — the exactness promise of ``cuda_mirror.md`` §1: quantizers byte-identical; int8
  (level E0: exact int32 accumulation) outputs within 1 ulp of the output dtype per element; MX and
  dual-scale (level E1: exact products, free fp32 summation order) within
  ``max(1e-3, eps(out dtype)) * max|ref|`` per element (the MX matmul rtol of the CANN op tests,
  ``npu_ops.md`` §6, or one output ulp of the largest value, whichever is larger); end to end at
  most 10% (+0.01) further from the float model than the reference.

Checks against the *float* model bound the reference quantization error itself (a broken weight
layout or a mis-wired layer shows up there even when every backend agrees).
"""
from __future__ import annotations

import torch

__all__ = ["EXACTNESS", "THRESHOLDS", "FLOAT_FLOORS", "exactness", "layer_failures", "layer_semantics", "e2e_failures",
           "TIERS"]

TIERS = ("smoke", "strict")

# exactness level per scheme name (cuda_mirror.md §1)
EXACTNESS = {
    "w8a8_dynamic": "E0",
    "w8a8_static": "E0",
    "w8a16": "E1",
    "mxfp8": "E1",
    "mxfp4": "E1",
    "w4a8_mxfp": "E1",
    "mxfp4_dual": "E1",
}

THRESHOLDS = {
    "smoke": {
        "quant_mismatch_frac_max": 1e-3,  # fraction of quantizer output bytes that may differ
        "layer_vs_ref": {"cosine_min": 0.9999, "rel_l2_max": 1e-2},
        "e2e": {"float_error_ratio_max": 1.25, "float_error_slack": 0.02},
    },
    "strict": {
        "quant_mismatch_frac_max": 0.0,
        "layer_vs_ref": {"E0": {"max_ulp_max": 1.0}, "E1": {"normwise_rtol": 1e-3}},
        "e2e": {"float_error_ratio_max": 1.10, "float_error_slack": 0.01},
    },
}

# Minimum cosine similarity of the reference against the float model, per scheme (per layer, end
# to end): sanity floors, set well below what the built-in tiny models measure (docs/parity.md;
# e.g. mxfp4 tiny-llama: worst layer 0.978, end to end 0.665) so that only a broken layer or
# wiring trips them.  Both tiers use them.
FLOAT_FLOORS = {
    "w8a8_dynamic": {"layer": 0.995, "e2e": 0.95},
    "w8a8_static": {"layer": 0.99, "e2e": 0.85},
    "w8a16": {"layer": 0.999, "e2e": 0.98},
    "mxfp8": {"layer": 0.995, "e2e": 0.9},
    "mxfp4": {"layer": 0.95, "e2e": 0.5},
    "w4a8_mxfp": {"layer": 0.98, "e2e": 0.7},
    "mxfp4_dual": {"layer": 0.95, "e2e": 0.5},
}
_DEFAULT_FLOOR = {"layer": 0.8, "e2e": 0.7}


def exactness(scheme_name: str) -> str:
    return EXACTNESS.get(scheme_name, "E1")


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0


def layer_semantics(scheme_name: str, res: dict, out_dtype: torch.dtype) -> str:
    """Which oracle a backend's layer output follows: ``"reference"`` (the scheme's full W/A
    quantization) or ``"weight-only"`` (an exact fallback that leaves activations unquantized, e.g.
    MX on A2/A3: weights decoded exactly, activations in their float dtype; cuda_mirror.md level E2).
    A layer that matches neither is judged against the reference."""
    if res.get("vs_weight_only") is None:
        return "reference"
    ok_ref = not _output_failures("strict", scheme_name, res.get("vs_reference"), out_dtype)
    if ok_ref:
        return "reference"
    ok_wo = not _output_failures("strict", scheme_name, res["vs_weight_only"], out_dtype, level="E1")
    return "weight-only" if ok_wo else "reference"


def _output_failures(tier, scheme_name, vr, out_dtype, level=None, what="reference") -> list[str]:
    why: list[str] = []
    if vr is None:
        return why
    th = THRESHOLDS[tier]
    if vr["new_nonfinite"]:
        why.append(f"{vr['new_nonfinite']} non-finite outputs where the {what} is finite")
    if tier == "smoke":
        lim = th["layer_vs_ref"]
        if vr["cosine"] < lim["cosine_min"]:
            why.append(f"cosine vs {what} {vr['cosine']:.6f} < {lim['cosine_min']}")
        if vr["rel_l2"] > lim["rel_l2_max"]:
            why.append(f"rel L2 vs {what} {vr['rel_l2']:.3g} > {lim['rel_l2_max']}")
        return why
    level = level or exactness(scheme_name)
    lim = th["layer_vs_ref"][level]
    if level == "E0":
        if vr["max_ulp"] > lim["max_ulp_max"]:
            why.append(f"E0: max error vs {what} {vr['max_ulp']:.3g} ulp of {str(out_dtype).replace('torch.', '')} > "
                       f"{lim['max_ulp_max']}")
    else:
        rtol = max(lim["normwise_rtol"], _eps(out_dtype))
        if vr["normwise"] > rtol:
            why.append(f"E1: max |err| / max|{what}| = {vr['normwise']:.3g} > {rtol:.3g}")
    return why


def layer_failures(tier: str, scheme_name: str, res: dict, out_dtype: torch.dtype, *, is_reference: bool) -> list[str]:
    """Reasons one layer result (``runner`` format) fails ``tier``; empty when it passes."""
    th = THRESHOLDS[tier]
    why: list[str] = []
    if res.get("status") != "ok":
        return why  # unsupported / unavailable are reported, not failed; errors are handled by the caller
    vf = res.get("vs_float")
    floor = FLOAT_FLOORS.get(scheme_name, _DEFAULT_FLOOR)["layer"]
    if vf is not None and vf["cosine"] < floor:
        why.append(f"cosine vs float {vf['cosine']:.6f} < {floor}")
    if is_reference:
        return why
    q = res.get("quant")
    if q is not None and q["mismatch_frac"] > th["quant_mismatch_frac_max"]:
        why.append(f"quantizer bytes differ from the reference ({q['mismatch_frac']:.3g} of bytes)")
    if res.get("semantics") == "weight-only":
        why += _output_failures(tier, scheme_name, res["vs_weight_only"], out_dtype, level="E1", what="weight-only")
    else:
        why += _output_failures(tier, scheme_name, res.get("vs_reference"), out_dtype)
    return why


def e2e_failures(tier: str, scheme_name: str, res: dict, ref_res: dict | None, *, is_reference: bool) -> list[str]:
    """End to end, a backend must be about as close to the float model as the reference is.

    Outputs are not compared with the reference's directly: a one-ulp difference in one layer moves
    an element across a rounding boundary of the next layer's activation quantizer, so faithful
    backends legitimately diverge end to end (an MXFP4 tiny-llama with one-ulp noise in 20% of every
    layer's outputs ends 0.26 rel. L2 from the reference yet as close to the float model).  The rule:
    ``rel_l2(backend, float) <= ratio * rel_l2(reference, float) + slack``.
    """
    why: list[str] = []
    if res.get("status") != "ok":
        return why
    floor = FLOAT_FLOORS.get(scheme_name, _DEFAULT_FLOOR)["e2e"]
    vf = res.get("vs_float")
    if vf is not None and vf["cosine"] < floor:
        why.append(f"end-to-end cosine vs float {vf['cosine']:.6f} < {floor}")
    if is_reference or ref_res is None or ref_res.get("status") != "ok":
        return why
    if vf["new_nonfinite"]:
        why.append(f"end to end: {vf['new_nonfinite']} non-finite outputs where the float model is finite")
    lim = THRESHOLDS[tier]["e2e"]
    ref_err = ref_res["vs_float"]["rel_l2"]
    allowed = lim["float_error_ratio_max"] * ref_err + lim["float_error_slack"]
    if vf["rel_l2"] > allowed:
        why.append(f"end-to-end rel L2 vs float {vf['rel_l2']:.4g} > {lim['float_error_ratio_max']} x reference's "
                   f"{ref_err:.4g} + {lim['float_error_slack']}")
    return why
