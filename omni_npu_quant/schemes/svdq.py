"""nunchaku SVDQuant W4A4 (``SVDQW4A4Linear``): an INT4 g64 or NVFP4 g16 residual with ``smooth_factor`` plus the
16-bit low-rank branch (docs/svd.md).  nunchaku checkpoints carry no label; ``checkpoint/nunchaku.py`` reads them into
these canonical tensor sets, and the labels below are ours (no msModelSlim tool writes them).

Canonical tensors (row-major, unpacked from nunchaku's tile order bit for bit):

* ``svdq_int4``: ``weight`` int8 values in [-8, 7] (N, K); ``weight_scale`` 16-bit (N, K/64); ``smooth_factor``
  16-bit (K,) (the residual sees ``x / smooth_factor``); optional ``bias`` (N,).
* ``svdq_nvfp4``: ``weight`` packed FP4 E2M1 uint8 (N, K/2) (our nibble order, ``numerics.fp4``); ``weight_scale``
  float8_e4m3fn (N, K/16); ``alpha`` fp32 (1,) (nunchaku's ``wtscale``); optional ``wcscales`` (N,) per output
  channel; ``smooth_factor`` (K,); optional ``bias``.
* both: ``svd_lowrank_l1`` [rank, K] = ``proj_down``^T, ``svd_lowrank_l2`` [N, rank] = ``proj_up``.

The residual schemes (``nunchaku_int4``, ``nunchaku_nvfp4``) are not registered on their own: they exist as the
residual of the registered SVD schemes.
"""
from __future__ import annotations

import torch

from ..numerics import svdq as Q
from ..numerics.fp4 import decode_e2m1, encode_e2m1, pack_fp4, unpack_fp4
from .base import Scheme, SchemeValidationError, TensorSpec, ceil_div
from .registry import register_scheme
from .svd_base import SVDScheme

F32, I8, U8, E4M3 = torch.float32, torch.int8, torch.uint8, torch.float8_e4m3fn
HALVES = (torch.bfloat16, torch.float16)
FLOATS = (torch.bfloat16, torch.float16, torch.float32)


class _NunchakuResidual(Scheme):
    weight_bits = 4
    group: int = 0

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self).__name__)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def check_values(self, tensors, n, k, loc):
        for name in ("weight_scale", "smooth_factor", "alpha", "wcscales"):
            t = tensors.get(name)
            if t is not None and not bool(torch.isfinite(t.float()).all()):
                raise SchemeValidationError(f"{loc}tensor '{name}' holds non-finite values")
        sm = tensors.get("smooth_factor")
        if sm is not None and bool((sm.float() == 0).any()):
            raise SchemeValidationError(f"{loc}tensor 'smooth_factor' holds zeros (the residual divides by it)")

    def smoothed(self, x2: torch.Tensor, smooth: torch.Tensor | None) -> torch.Tensor:
        return Q.smooth_divide(x2, smooth)


class NunchakuInt4(_NunchakuResidual):
    name = "nunchaku_int4"
    label = "NUNCHAKU_W4A4_INT4_RESIDUAL"
    group = k_multiple = Q.INT4_GROUP

    def tensor_specs(self, n, k, *, has_bias=False):
        return [TensorSpec("weight", (I8,), (n, k), input_dim=1, output_dim=0, doc="int4 values in [-8, 7]"),
                TensorSpec("weight_scale", HALVES, (n, ceil_div(k, self.group)), input_dim=1, output_dim=0),
                TensorSpec("smooth_factor", HALVES, (k,), input_dim=0, optional=True),
                TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True)]

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        w = tensors["weight"]
        if w.numel() and (int(w.min()) < -8 or int(w.max()) > 7):
            raise SchemeValidationError(f"{loc}tensor 'weight' holds values outside the int4 range [-8, 7]")

    def quantize_weight(self, weight, bias=None, **calib):
        q, s = Q.int4_weight_quant(weight)
        out = {"weight": q, "weight_scale": s}
        if bias is not None:
            out["bias"] = bias.to(torch.bfloat16)
        return out

    def dequantize_weight(self, tensors, k=None):
        w = tensors["weight"].to(F32)
        n, kk = w.shape
        s = tensors["weight_scale"].to(F32).repeat_interleave(self.group, dim=1)[:, :kk]
        return w * s

    def quantize_activation(self, x2, smooth):
        q, s = Q.int4_act_quant(self.smoothed(x2, smooth))
        return {"x_q": q, "x_scale": s}

    def activation_operands(self, st):
        """(exact element values fp32 (M, K), scales (M, G))."""
        return st["x_q"].to(F32), st["x_scale"]

    def weight_operands(self, tensors, k):
        return tensors["weight"].to(F32), tensors["weight_scale"]

    def epilogue(self, out, tensors):
        return out


class NunchakuNVFP4(_NunchakuResidual):
    name = "nunchaku_nvfp4"
    label = "NUNCHAKU_W4A4_NVFP4_RESIDUAL"
    group = k_multiple = Q.NVFP4_GROUP

    def tensor_specs(self, n, k, *, has_bias=False):
        return [TensorSpec("weight", (U8,), (n, ceil_div(k, 2)), input_dim=1, output_dim=0, doc="packed FP4 E2M1"),
                TensorSpec("weight_scale", (E4M3,), (n, ceil_div(k, self.group)), input_dim=1, output_dim=0),
                TensorSpec("alpha", (F32,), (1,), per_tensor=True, doc="nunchaku wtscale"),
                TensorSpec("wcscales", FLOATS + (E4M3,), (n,), output_dim=0, optional=True),
                TensorSpec("smooth_factor", HALVES, (k,), input_dim=0, optional=True),
                TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True)]

    def k_from_weight_cols(self, cols):
        return 2 * int(cols)

    def infer_shape(self, tensors):
        n, c = super().infer_shape(tensors)
        return n, 2 * c

    def quantize_weight(self, weight, bias=None, **calib):
        e, s, alpha = Q.nvfp4_weight_quant(weight)
        out = {"weight": pack_fp4(encode_e2m1(e)), "weight_scale": s, "alpha": alpha}
        if bias is not None:
            out["bias"] = bias.to(torch.bfloat16)
        return out

    def weight_values(self, tensors, k):
        return decode_e2m1(unpack_fp4(tensors["weight"], k))

    def dequantize_weight(self, tensors, k=None):
        k = k if k is not None else 2 * tensors["weight"].shape[1]
        s = tensors["weight_scale"].to(F32).repeat_interleave(self.group, dim=1)[:, :k]
        w = self.weight_values(tensors, k) * s * tensors["alpha"].to(F32).reshape(())
        wc = tensors.get("wcscales")  # per output channel: a row of the (N, K) weight (epilogue() scales columns)
        return w if wc is None else w * wc.to(F32).reshape(-1, 1)

    def quantize_activation(self, x2, smooth):
        e, s = Q.nvfp4_act_quant(self.smoothed(x2, smooth))
        return {"x_q": pack_fp4(encode_e2m1(e)), "x_scale": s}

    def activation_operands(self, st):
        k = st["x_q"].shape[-1] * 2
        return decode_e2m1(unpack_fp4(st["x_q"], k)), st["x_scale"]

    def weight_operands(self, tensors, k):
        return self.weight_values(tensors, k), tensors["weight_scale"]

    def epilogue(self, out, tensors):
        """``out * alpha * wcscales`` (fp32), the order of nunchaku's GEMM epilogue."""
        out = out * tensors["alpha"].to(F32).reshape(())
        wc = tensors.get("wcscales")
        return out if wc is None else out * wc.to(F32)


@register_scheme()
class SVDQInt4(SVDScheme):
    name = "svdq_int4"
    label = "NUNCHAKU_SVDQ_W4A4_INT4"
    residual_cls = NunchakuInt4

    def __init__(self, rank: int | None = None):
        super().__init__(rank)


@register_scheme()
class SVDQNVFP4(SVDScheme):
    name = "svdq_nvfp4"
    label = "NUNCHAKU_SVDQ_W4A4_NVFP4"
    residual_cls = NunchakuNVFP4

    def __init__(self, rank: int | None = None):
        super().__init__(rank)
