"""MX schemes: MXFP8 W8A8, MXFP4 W4A4 (single scale), W4A8 MXFP (FP4 weights, FP8 activations)
and dual-scale MXFP4 W4A4 (``mxfp4_dual``).

Stored tensors (msModelSlim AscendV1): ``weight`` float8_e4m3fn (N, K) or packed FP4 uint8
(N, K/2); ``weight_scale`` uint8 E8M0 codes (N, ceil(K/32)); dual-scale adds
``weight_dual_scale`` fp32 (N, ceil(K/512), 1); optional ``mul_scale`` (K,) and fp32 ``bias``.

Activation rules are scheme fields so that every backend runs the same quantizer:
``act_round_mode`` (FP4: "rint" | "round" | "floor"; FP8: "rint") and ``act_scale_alg``.
Defaults: MXFP8 rint/0; MXFP4 and W4A8 ``round``/0 as vllm-ascend serves msModelSlim W4A4_MXFP4;
dual-scale ``rint`` (the op default, vllm-omni).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import E2M1, E4M3
from ..numerics import mx as MX
from ..numerics.constants import DUAL_L0_BLOCK, E8M0_NAN, MX_BLOCK
from ..numerics.e8m0 import code_to_exponent, exponent_to_code
from ..numerics.mx_dual import dual_level_dequantize, dual_level_quantize
from .base import Scheme, SchemeValidationError, TensorSpec, ceil_div

F32, U8 = torch.float32, torch.uint8
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class _MXBase(Scheme):
    act_round_mode: str = "rint"
    act_scale_alg: int = 0
    weight_round_mode: str = "rint"  # online weight quantization only; checkpoints are loaded verbatim
    weight_scale_alg: int = 0

    weight_fmt = E2M1
    act_fmt = E2M1
    k_multiple = MX_BLOCK  # whole E8M0 blocks only (calibrate, the reader, vLLM and every kernel agree)

    def weight_storage_spec(self, n, k) -> TensorSpec:
        if self.weight_fmt is E2M1:
            return TensorSpec("weight", (U8,), (n, ceil_div(k, 2)), input_dim=1, output_dim=0, doc="packed FP4 E2M1")
        return TensorSpec("weight", (torch.float8_e4m3fn, U8), (n, k), input_dim=1, output_dim=0)

    def infer_shape(self, tensors):
        n, c = super().infer_shape(tensors)
        return n, (2 * c if self.weight_fmt is E2M1 else c)

    def tensor_specs(self, n, k, *, has_bias=False):
        return [
            self.weight_storage_spec(n, k),
            TensorSpec("weight_scale", (U8,), (n, ceil_div(k, MX_BLOCK)), input_dim=1, output_dim=0, doc="E8M0 codes"),
            TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True),
            TensorSpec("mul_scale", FLOATS, (k,), input_dim=0, optional=True),
        ]

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        ws = tensors["weight_scale"]
        if bool((ws == E8M0_NAN).any()):
            idx = (ws == E8M0_NAN).nonzero()[0].tolist()
            raise SchemeValidationError(f"{loc}tensor 'weight_scale' holds E8M0 code 255 (NaN) at {idx}")

    # ---- weights --------------------------------------------------------------------
    def quantize_weight(self, weight, bias=None, **calib):
        r = MX.mx_quantize(weight, self.weight_fmt, self.weight_round_mode, self.weight_scale_alg)
        out = {"weight": MX.mx_encode(r.values, self.weight_fmt), "weight_scale": r.codes}
        if bias is not None:
            out["bias"] = bias.to(F32)
        return out

    def weight_values(self, tensors, k: int) -> torch.Tensor:
        """fp32 element values (N, K) of the stored weight (exact)."""
        w = tensors["weight"]
        if self.weight_fmt is E4M3 and w.dtype == U8:
            w = w.view(torch.float8_e4m3fn)
        return MX.mx_decode(w, self.weight_fmt, k)

    def weight_level1(self, tensors, k: int) -> torch.Tensor:
        """dec(weight) * 2**weight_scale, fp32 (N, K), exact."""
        return MX.mx_dequantize(self.weight_values(tensors, k), code_to_exponent(tensors["weight_scale"]))

    def dequantize_weight(self, tensors, k=None):
        k = k if k is not None else self.infer_shape(tensors)[1]
        return self.weight_level1(tensors, k)

    # ---- activations ----------------------------------------------------------------
    def quantize_activation(self, x: torch.Tensor, mul_scale: torch.Tensor | None = None):
        """Reference activation quantizer -> ``MXResult`` (values fp32, exponents int32)."""
        from .base import apply_mul_scale

        return MX.mx_quantize(apply_mul_scale(x, mul_scale), self.act_fmt, self.act_round_mode, self.act_scale_alg)

    def activation_storage(self, r) -> dict[str, torch.Tensor]:
        """A quantized activation in the device op's output layout: ``x_q`` (FP8 or packed FP4),
        ``x_scale`` E8M0 pairs (M, ceil(K/64), 2), and for dual-level ``x_l0`` fp32 (M, ceil(K/512))."""
        if hasattr(r, "l0"):
            return {"x_q": MX.mx_encode(r.values, E2M1), "x_l0": r.l0,
                    "x_scale": MX.to_scale_pairs(exponent_to_code(r.exponents))}
        return {"x_q": MX.mx_encode(r.values, self.act_fmt), "x_scale": MX.to_scale_pairs(r.codes)}

    def describe(self):
        return {**super().describe(), "act_round_mode": self.act_round_mode, "act_scale_alg": self.act_scale_alg}


@dataclass
class MXFP8(_MXBase):
    name = "mxfp8"
    label = "W8A8_MXFP8"
    weight_bits = 8
    weight_fmt = E4M3
    act_fmt = E4M3


@dataclass
class MXFP4(_MXBase):
    name = "mxfp4"
    label = "W4A4_MXFP4"
    weight_bits = 4
    act_round_mode: str = "round"


@dataclass
class W4A8MXFP(_MXBase):
    name = "w4a8_mxfp"
    label = "W4A8_MXFP"
    weight_bits = 4
    act_fmt = E4M3


@dataclass
class MXFP4Dual(_MXBase):
    """Dual-scale MXFP4 W4A4 (``W4A4_MXFP4_DUALSCALE``): level-0 fp32 per 512, level-1 E8M0 per 32.

    K must be a multiple of 512 (per tensor-parallel rank).  ``mul_scale`` is fused into the
    activation quantizer (``npu_dynamic_dual_level_mx_quant(smooth_scale=...)``).
    """

    name = "mxfp4_dual"
    label = "W4A4_MXFP4_DUALSCALE"
    weight_bits = 4
    smooth_fused = True
    act_round_mode: str = "rint"
    k_multiple = DUAL_L0_BLOCK

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
        return tensors["weight_dual_scale"].to(F32).reshape(tensors["weight_dual_scale"].shape[0], -1)

    def dequantize_weight(self, tensors, k=None):
        k = k if k is not None else self.infer_shape(tensors)[1]
        return dual_level_dequantize(self.weight_values(tensors, k), self.weight_l0(tensors),
                                     code_to_exponent(tensors["weight_scale"]))

    def quantize_activation(self, x, mul_scale=None):
        smooth = None if mul_scale is None else mul_scale.to(x.dtype)
        return dual_level_quantize(x, smooth, self.act_round_mode)
