"""Dual-scale MXFP4 W4A4 (msModelSlim ``W4A4_MXFP4_DUALSCALE``): level-0 fp32 scale per 512,
level-1 E8M0 per 32.  Adds ``weight_dual_scale`` fp32 (N, K/512, 1).  K must be a multiple of 512
(per tensor-parallel rank).  ``mul_scale`` is fused into the activation quantizer
(``npu_dynamic_dual_level_mx_quant(smooth_scale=...)``, taken in the activation dtype)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import E2M1
from ..numerics import mx as MX
from ..numerics.constants import DUAL_L0_BLOCK
from ..numerics.e8m0 import code_to_exponent, exponent_to_code
from ..numerics.mx_dual import dual_level_dequantize, dual_level_quantize
from .base import SchemeValidationError, TensorSpec, ceil_div
from .mx_base import MXScheme
from .registry import register_scheme

F32 = torch.float32


@register_scheme()
@dataclass
class MXFP4Dual(MXScheme):
    name = "mxfp4_dual"
    label = "W4A4_MXFP4_DUALSCALE"
    weight_bits = 4
    order = 70
    in_main_job = True
    act_round_mode: str = "rint"
    k_multiple = DUAL_L0_BLOCK
    dual_level = True

    def tensor_specs(self, n, k, *, has_bias=False):
        specs = super().tensor_specs(n, k, has_bias=has_bias)
        specs.insert(2, TensorSpec("weight_dual_scale", (F32,), (n, ceil_div(k, DUAL_L0_BLOCK), 1), input_dim=1,
                                   output_dim=0, doc="level-0 fp32 scale per 512"))
        return specs

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        ds = tensors["weight_dual_scale"].float()
        if not bool(torch.isfinite(ds).all()) or bool((ds < 0).any()):
            raise SchemeValidationError(f"{loc}tensor 'weight_dual_scale' must be finite and >= 0")

    def quantize_weight(self, weight, bias=None, **calib):
        r = dual_level_quantize(weight, None, self.weight_round_mode)
        out = {
            "weight": MX.mx_encode(r.values, E2M1),
            "weight_scale": exponent_to_code(r.exponents),
            "weight_dual_scale": r.l0.to(F32).unsqueeze(-1),
        }
        if bias is not None:
            out["bias"] = bias.to(F32)
        return out

    def weight_l0(self, tensors) -> torch.Tensor:
        """Level-0 weight scales as fp32 (N, K/512)."""
        return tensors["weight_dual_scale"].to(F32).reshape(tensors["weight_dual_scale"].shape[0], -1)

    def dequantize_weight(self, tensors, k=None):
        k = k if k is not None else self.infer_shape(tensors)[1]
        return dual_level_dequantize(self.weight_values(tensors, k), self.weight_l0(tensors),
                                     code_to_exponent(tensors["weight_scale"]))

    def quantize_activation(self, x, mul_scale=None):
        smooth = None if mul_scale is None else mul_scale.to(x.dtype)
        return dual_level_quantize(x, smooth, self.act_round_mode)

    def activation_values(self, r) -> torch.Tensor:
        return dual_level_dequantize(r.values, r.l0, r.exponents)
