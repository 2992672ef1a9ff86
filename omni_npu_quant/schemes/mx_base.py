"""What every MX scheme shares (not a scheme itself): E8M0 block-32 weight scales, the
activation rule as scheme fields, storage of quantized activations in the device op's layout.

Stored tensors (msModelSlim AscendV1): ``weight`` float8_e4m3fn (N, K) or packed FP4 uint8
(N, K/2); ``weight_scale`` uint8 E8M0 codes (N, K/32); optional ``mul_scale`` (K,) and fp32 ``bias``.
K must be a multiple of 32 (whole E8M0 blocks).

Activation rules are scheme fields so that every kernel runs the same quantizer:
``act_round_mode`` (FP4: "rint" | "round" | "floor"; FP8: "rint") and ``act_scale_alg`` (0, 1, 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import E2M1, E4M3
from ..numerics import mx as MX
from ..numerics.constants import E8M0_NAN, MX_BLOCK, ROUND_MODES
from ..numerics.e8m0 import SCALE_ALGS, code_to_exponent, exponent_to_code
from .base import Scheme, SchemeValidationError, TensorSpec, apply_mul_scale, ceil_div

F32, U8 = torch.float32, torch.uint8
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class MXScheme(Scheme):
    act_round_mode: str = "rint"
    act_scale_alg: int = 0
    weight_round_mode: str = "rint"  # online weight quantization only; checkpoints are loaded verbatim
    weight_scale_alg: int = 0

    weight_fmt = E2M1
    act_fmt = E2M1
    k_multiple = MX_BLOCK  # whole E8M0 blocks only (calibrate, the reader, vLLM and every kernel agree)
    dual_level = False  # True: a level-0 fp32 scale per 512 on top of the E8M0 scales
    rows_independent = True

    def __post_init__(self):
        for what, fmt, mode, alg in (("act", self.act_fmt, self.act_round_mode, self.act_scale_alg),
                                     ("weight", self.weight_fmt, self.weight_round_mode, self.weight_scale_alg)):
            modes = ROUND_MODES if fmt is E2M1 else ("rint",)
            if mode not in modes:
                raise ValueError(f"scheme {self.name}: {what}_round_mode={mode!r} is not one of {list(modes)} "
                                 f"for {fmt.name} elements")
            if alg not in SCALE_ALGS:
                raise ValueError(f"scheme {self.name}: {what}_scale_alg={alg!r} is not one of {list(SCALE_ALGS)}")

    def weight_storage_spec(self, n, k) -> TensorSpec:
        if self.weight_fmt is E2M1:
            return TensorSpec("weight", (U8,), (n, ceil_div(k, 2)), input_dim=1, output_dim=0, doc="packed FP4 E2M1")
        return TensorSpec("weight", (torch.float8_e4m3fn, U8), (n, k), input_dim=1, output_dim=0)

    def k_from_weight_cols(self, cols: int) -> int:
        return 2 * int(cols) if self.weight_fmt is E2M1 else int(cols)

    def infer_shape(self, tensors):
        n, c = super().infer_shape(tensors)
        return n, self.k_from_weight_cols(c)

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

    def weight_elements(self, tensors) -> torch.Tensor:
        """The stored weight as its element dtype (E4M3 bytes viewed as float8_e4m3fn; FP4 packed uint8)."""
        w = tensors["weight"]
        if self.weight_fmt is E4M3 and w.dtype == U8:
            w = w.view(torch.float8_e4m3fn)
        return w

    def weight_values(self, tensors, k: int) -> torch.Tensor:
        """fp32 element values (N, K) of the stored weight (exact)."""
        return MX.mx_decode(self.weight_elements(tensors), self.weight_fmt, k)

    def weight_level1(self, tensors, k: int) -> torch.Tensor:
        """dec(weight) * 2**weight_scale, fp32 (N, K), exact."""
        return MX.mx_dequantize(self.weight_values(tensors, k), code_to_exponent(tensors["weight_scale"]))

    def dequantize_weight(self, tensors, k=None):
        k = k if k is not None else self.infer_shape(tensors)[1]
        return self.weight_level1(tensors, k)

    # ---- activations ----------------------------------------------------------------
    def quantize_activation(self, x: torch.Tensor, mul_scale: torch.Tensor | None = None):
        """Reference activation quantizer -> ``MXResult`` (values fp32, exponents int32)."""
        return MX.mx_quantize(apply_mul_scale(x, mul_scale), self.act_fmt, self.act_round_mode, self.act_scale_alg)

    def activation_storage(self, r) -> dict[str, torch.Tensor]:
        """A quantized activation in the device op's output layout: ``x_q`` (FP8 or packed FP4),
        ``x_scale`` E8M0 pairs (M, ceil(K/64), 2), and for dual-level ``x_l0`` fp32 (M, ceil(K/512))."""
        if hasattr(r, "l0"):
            return {"x_q": MX.mx_encode(r.values, E2M1), "x_l0": r.l0,
                    "x_scale": MX.to_scale_pairs(exponent_to_code(r.exponents))}
        return {"x_q": MX.mx_encode(r.values, self.act_fmt), "x_scale": MX.to_scale_pairs(r.codes)}

    def activation_values(self, r) -> torch.Tensor:
        """fp32 values a quantized activation represents (exact)."""
        return MX.mx_dequantize(r.values, r.exponents)

    def activation_from_storage(self, st: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inverse of ``activation_storage``: (exact fp32 level-1 values (M, K), level-0 (M, K/512) or None)."""
        codes = MX.from_scale_pairs(st["x_scale"], MX.num_blocks(k))
        fmt = E2M1 if "x_l0" in st else self.act_fmt
        vals = MX.mx_decode(st["x_q"], fmt, k)
        return MX.mx_dequantize(vals, code_to_exponent(codes)), st.get("x_l0")

    def describe(self):
        return {**super().describe(), "act_round_mode": self.act_round_mode, "act_scale_alg": self.act_scale_alg}
