"""The exact reference emulation of every scheme's linear.

* int8 (W8A8 dynamic / static): int8 x int8 products with exact int32 accumulation, then the
  NPU epilogue order (``numerics.int8``; ``npu_ops.md`` section 4).
* MX (MXFP8, MXFP4, W4A8): exact element x E8M0 operands, fp32 accumulation (``numerics.gemm``).
* dual-scale: fp32 partial sums per 512-block scaled by level-0 scales (``numerics.gemm``).
* W8A16: fp32 ``x @ dequant(W).T``.

Activation quantizer outputs (``quantize_activation``) use the NPU op layouts: int8 + fp32
per-token scale; FP8 / packed FP4 + E8M0 pairs (M, ceil(K/64), 2); dual-level adds fp32 (M, K/512).
"""
from __future__ import annotations

import torch

from ...numerics import int8 as I
from ...numerics import mx as MX
from ...numerics.gemm import dual_level_matmul, mx_matmul
from ...schemes.base import Scheme, apply_mul_scale, effective_mul_scale
from ...schemes.int8 import W8A16, W8A8Dynamic, W8A8Static, effective_deq_scale
from ...schemes.mx import MXFP4Dual, _MXBase
from ..base import NATIVE, Capability, LinearBackend, PreparedLinear

F32 = torch.float32


class ReferenceBackend(LinearBackend):
    name = "reference"

    def capability(self, scheme: Scheme) -> Capability:
        return Capability(NATIVE, "exact PyTorch emulation")

    # ------------------------------------------------------------------------------------
    def prepare(self, scheme, tensors, act_dtype, *, k=None, where=""):
        n, k = scheme.validate(tensors, k=k, where=where)
        t: dict = {}
        ms = tensors.get("mul_scale")
        t["mul_scale"] = effective_mul_scale(ms, act_dtype)
        bias = tensors.get("bias")
        if isinstance(scheme, (W8A8Dynamic,)):
            t["weight"] = tensors["weight"]
            ws = tensors["weight_scale"].to(F32)
            t["weight_scale"] = ws
            t["group_size"] = k // ws.shape[-1]
        elif isinstance(scheme, W8A8Static):
            t["weight"] = tensors["weight"]
            # npu_quantize takes the reciprocal and the offset in the activation dtype
            recip = (1.0 / tensors["input_scale"].to(F32).reshape(-1)[:1])
            t["act_scale"] = recip.to(act_dtype)
            t["act_offset"] = tensors["input_offset"].to(F32).reshape(-1)[:1].to(act_dtype)
            t["quant_bias"] = tensors["quant_bias"].to(torch.int32)
            t["deq"] = effective_deq_scale(tensors["deq_scale"], act_dtype)
            bias = None  # folded into quant_bias
        elif isinstance(scheme, W8A16):
            t["w_deq"] = scheme.dequantize_weight(tensors)
        elif isinstance(scheme, MXFP4Dual):
            t["w_l1"] = scheme.weight_level1(tensors, k)
            t["w_l0"] = scheme.weight_l0(tensors)
        elif isinstance(scheme, _MXBase):
            t["w_deq"] = scheme.weight_level1(tensors, k)
        else:
            raise TypeError(f"reference backend does not know scheme {type(scheme).__name__}")
        t["bias"] = None if bias is None else bias.to(F32)
        return PreparedLinear(scheme, self.name, n, k, act_dtype, t)

    # ------------------------------------------------------------------------------------
    def quantize_activation(self, p: PreparedLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s, t = p.scheme, p.tensors
        x = x.to(p.act_dtype)
        if isinstance(s, W8A8Dynamic):
            q, sc = I.dynamic_quant_int8(x, t["mul_scale"])
            return {"x_q": q, "x_scale": sc}
        if isinstance(s, W8A8Static):
            x = apply_mul_scale(x, t["mul_scale"])
            return {"x_q": I.static_quant_int8(x, t["act_scale"], t["act_offset"])}
        if isinstance(s, W8A16):
            return {}
        return s.activation_storage(s.quantize_activation(x, t["mul_scale"]))

    # ------------------------------------------------------------------------------------
    def apply(self, p: PreparedLinear, x: torch.Tensor, *, add_bias: bool = True) -> torch.Tensor:
        s, t = p.scheme, p.tensors
        out_dtype = x.dtype
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(p.act_dtype)
        bias = t["bias"] if add_bias else None
        if isinstance(s, W8A8Dynamic):
            q, sc = I.dynamic_quant_int8(x2, t["mul_scale"])
            gs = t["group_size"]
            if gs == p.k:
                acc = I.int8_matmul(q, t["weight"]).to(F32) * t["weight_scale"].reshape(1, -1)
            else:
                acc = None
                for g in range(p.k // gs):
                    sl = slice(g * gs, (g + 1) * gs)
                    part = I.int8_matmul(q[:, sl], t["weight"][:, sl]).to(F32) * t["weight_scale"][:, g].reshape(1, -1)
                    acc = part if acc is None else acc + part
            out = acc * sc.unsqueeze(-1)
            if bias is not None:
                out = out + bias
        elif isinstance(s, W8A8Static):
            x2 = apply_mul_scale(x2, t["mul_scale"])
            q = I.static_quant_int8(x2, t["act_scale"], t["act_offset"])
            acc = I.int8_matmul(q, t["weight"])
            if add_bias:
                acc = acc + t["quant_bias"]
            out = acc.to(F32) * t["deq"]
        elif isinstance(s, W8A16):
            x2 = apply_mul_scale(x2, t["mul_scale"])
            out = mx_matmul(x2.to(F32), t["w_deq"], bias)
        elif isinstance(s, MXFP4Dual):
            r = s.quantize_activation(x2, t["mul_scale"])
            a_l1 = MX.mx_dequantize(r.values, r.exponents)
            out = dual_level_matmul(a_l1, r.l0, t["w_l1"], t["w_l0"], bias)
        else:
            r = s.quantize_activation(x2, t["mul_scale"])
            out = mx_matmul(MX.mx_dequantize(r.values, r.exponents), t["w_deq"], bias)
        return out.to(out_dtype).reshape(*lead, p.n)
