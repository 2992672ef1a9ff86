"""NPU MX fallback kernel for Atlas A2 / A3, which have no MX ops (aclnn 361001).

* FP4 weights (MXFP4, W4A8, dual-scale): the value x 2 is an int8 in [-12, 12] with a power-of-two
  group scale 2^(e-1) -> ``npu_weight_quant_batchmatmul(antiquant_group_size=32)`` (exact).
  Dual-scale folds level 0 into that group scale, rounded to the activation dtype (not bit-exact:
  relative weight error <= 2^-8 bf16 / 2^-11 fp16).
* MXFP8 weights (and FP4 scales outside the activation dtype): decoded once to the activation
  dtype (exact; fp32 where not representable), dense matmul with fp32 accumulation.
* Activations are not quantized (weight-only semantics), unless the backend option
  ``act_fake_quant=True``: then ``quantize_activation`` runs the scheme's activation rule and
  ``apply`` multiplies its exactly decoded values, so outputs follow A5's W4A4/W8A8 semantics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics import mx as MX
from ...numerics.bits import pow2
from ...numerics.constants import DUAL_L0_BLOCK, E2M1, MX_BLOCK
from ...numerics.e8m0 import code_to_exponent
from ...numerics.gemm import mx_matmul
from ...numerics.mx_dual import dual_level_dequantize, expand_l0
from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import FALLBACK, PreparedLinear
from ..registry import register_kernel
from .common import BF16, F32, FP16, NpuKernel, exact_in


@dataclass
class NpuMXFallbackPrepared(PreparedLinear):
    wq: torch.Tensor | None = None  # int8 2x FP4 values (K, N) transpose view, or None
    aq_scale: torch.Tensor | None = None  # group scales (K/32, N) in the activation dtype
    w_dense: torch.Tensor | None = None  # decoded weight (N, K), act dtype or fp32
    bias_f32: torch.Tensor | None = None


@register_kernel(40)
class NpuMXFallback(NpuKernel):
    name = "npu.mx_fallback"
    schemes = ("mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")
    socs = ("A2", "A3")
    summaries = {
        "mxfp8": "no MX kernels on A2/A3 (aclnn 361001): E4M3 x E8M0 weights decoded exactly to the activation dtype "
                 "once (fp32 where not representable), dense matmul; activations unquantized unless act_fake_quant",
        "mxfp4": "no MX kernels on A2/A3: FP4 weight x2 is an int8 in [-12,12] with a power-of-two scale per 32-group "
                 "-> npu_weight_quant_batchmatmul(antiquant_group_size=32), exact; activations unquantized unless "
                 "act_fake_quant",
        "w4a8_mxfp": "no MX kernels on A2/A3: same exact int8 + power-of-two group-scale weight as mxfp4; activations "
                     "unquantized unless act_fake_quant",
        "mxfp4_dual": "no dual-level kernels on A2/A3: level-0 folded into the per-32 group scale (2^(e-1)*l0 rounded "
                      "to the activation dtype: relative weight error <= 2^-8 bf16 / 2^-11 fp16, not bit-exact); "
                      "npu_weight_quant_batchmatmul(antiquant_group_size=32)",
    }

    def mode(self, scheme):
        return FALLBACK, self.summaries[scheme.name]

    @property
    def fake_quant(self) -> bool:
        return bool(self.target.options.get("act_fake_quant", False))

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        st = {s: t.to(dev) for s, t in tensors.items()}
        vals = scheme.weight_values(st, k)  # exact fp32 (N, K)
        e = code_to_exponent(st["weight_scale"])
        bias32 = None if st.get("bias") is None else st["bias"].to(F32)
        p = NpuMXFallbackPrepared(scheme, self, n, k, act_dtype, bias=bias32, bias_f32=bias32, mode=FALLBACK,
                                  mul_scale=None if st.get("mul_scale") is None else
                                  effective_mul_scale(st["mul_scale"], act_dtype))
        l0 = scheme.weight_l0(st) if scheme.dual_level else None
        if scheme.weight_fmt is E2M1 and k > MX_BLOCK:
            gscale = pow2(e) * 0.5  # exact: 2^(e-1), fp32 exact down to 2^-128
            if l0 is not None:
                gscale = gscale * l0.repeat_interleave(DUAL_L0_BLOCK // MX_BLOCK, dim=-1)[:, :gscale.shape[-1]]
            s_act = gscale.to(act_dtype)
            exact = exact_in(gscale, act_dtype)
            if exact or l0 is not None:
                p.wq = (vals * 2).to(torch.int8).t()
                p.aq_scale = s_act.t().contiguous()
                p.bias = None if bias32 is None else bias32.to(F32 if act_dtype == BF16 else FP16)
                if not exact:
                    rel = ((s_act.to(F32) - gscale).abs() / gscale.clamp_min(1e-38)).max().item()
                    p.notes.append(f"dual-scale on {self.soc}: level-0 x 2^(e-1) group scales rounded to {act_dtype} "
                                   f"(max relative change {rel:.2e}); not bit-exact")
                return p
            p.notes.append(f"power-of-two group scales fall outside {act_dtype}: weights decoded to fp32 once "
                           f"(4 bytes/weight), fp32 matmul")
        w = dual_level_dequantize(vals, l0, e) if l0 is not None else MX.mx_dequantize(vals, e)
        if exact_in(w, act_dtype):
            p.w_dense = w.to(act_dtype)
        else:
            p.w_dense = w
            p.notes.append(f"decoded weights are not representable in {act_dtype}: kept in fp32 (4 bytes/weight)")
        return p

    def quantize_activation(self, p, x2):
        if not self.fake_quant:
            return {}  # weight-only semantics: the activation is not quantized
        s = p.scheme
        return s.activation_storage(s.quantize_activation(x2, p.mul_scale))

    def apply(self, p, x2, add_bias=True):
        npu, act = self.ops(), p.act_dtype
        qa = self.quantize_activation(p, x2)
        if qa:
            l1, l0 = p.scheme.activation_from_storage(qa, p.k)
            xs = (l1 if l0 is None else l1 * expand_l0(l0, p.k)).to(act)
        else:
            xs = apply_mul_scale(x2, p.mul_scale)
        if p.wq is not None:
            return npu.npu_weight_quant_batchmatmul(xs, p.wq, p.aq_scale, None, bias=p.bias if add_bias else None,
                                                    antiquant_group_size=MX_BLOCK)
        bias = p.bias_f32 if add_bias else None
        if self.target.device.simulated or p.w_dense.dtype == F32:
            # the cube unit accumulates bf16/fp16 products in fp32 and rounds once: emulate exactly that
            return mx_matmul(xs.to(F32), p.w_dense.to(F32), bias).to(act)
        out = torch.nn.functional.linear(xs, p.w_dense).to(F32)  # pragma: no cover - real NPU only
        return (out if bias is None else out + bias).to(act)

