"""NPU W4A16 kernel (A2/A3/A5): native int4 weights through ``npu_weight_quant_batchmatmul``.

Load: int4 values (N, K) -> (K, N) int32 -> ``npu_convert_weight_to_int4pack`` -> int32 (K, N/8)
(torch_npu's signed two's-complement nibbles, 8 per int32 along N; the call vllm-ascend's dense wNa16
kernel makes, ``vllm_ascend/quantization/kernels/mixed_precision/npu.py``).  Scales and the *negated*
offsets (the op adds ``antiquant_offset``; msModelSlim subtracts ``weight_offset``) in the activation
dtype: (N,) per channel, (G, N) per group with ``antiquant_group_size``.  GPTQ act-order gathers the
input columns first (``x[:, input_perm]``).  The op dequantizes in the activation dtype
(``rnd(rnd(q - offset) * scale)``, CANN golden), accumulates in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...schemes.base import apply_mul_scale, effective_mul_scale
from ..base import NATIVE, KernelRefusal, PreparedLinear
from ..registry import register_kernel
from .common import BF16, F32, FP16, NpuKernel, exact_in

NPU_PACK_MULTIPLE = 8  # int4pack packs the last dim (N of the (K, N) weight) 8 per int32


@dataclass
class NpuW4A16Prepared(PreparedLinear):
    weight: torch.Tensor | None = None  # int32 (K, N/8) int4pack
    aq_scale: torch.Tensor | None = None  # (N,) or (G, N), activation dtype
    aq_offset: torch.Tensor | None = None  # -weight_offset, same shape, or None (symmetric)
    group_size: int = 0  # 0 = per channel
    perm: torch.Tensor | None = None  # int64 (K,) act-order gather, or None


@register_kernel(25)
class NpuW4A16(NpuKernel):
    name = "npu.w4a16"
    schemes = ("w4a16",)
    summary = ("npu_weight_quant_batchmatmul with int4 weights (npu_convert_weight_to_int4pack), per-channel or "
               "per-group antiquant scale and negated offset in the activation dtype")

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if ok and n is not None and n % NPU_PACK_MULTIPLE:
            return False, (f"N (out_features) = {n} is not a multiple of {NPU_PACK_MULTIPLE}: "
                           f"npu_convert_weight_to_int4pack packs the (K, N) weight along N")
        return ok, why

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        gs = scheme.group_size_of(tensors, k)
        if gs != k and (gs % 32 or gs > k - 1):
            raise KernelRefusal(f"group size {gs} (K={k}): npu_weight_quant_batchmatmul takes antiquant_group_size "
                                f"a multiple of 32 in [32, K-1]")
        ws = tensors["weight_scale"].to(dev, F32).reshape(n, -1)
        off = scheme.offset_of(tensors)
        shape = (lambda v: v.reshape(-1)) if gs == k else (lambda v: v.reshape(n, -1).t().contiguous())
        w_kn = tensors["weight"].to(dev).to(torch.int32).t().contiguous()  # (K, N) int values
        packed = self.ops().npu_convert_weight_to_int4pack(w_kn)
        bias = tensors.get("bias")
        perm = tensors.get("input_perm")
        p = NpuW4A16Prepared(
            scheme, self, n, k, act_dtype,
            bias=None if bias is None else bias.to(dev, F32 if act_dtype == BF16 else FP16),
            mul_scale=None if tensors.get("mul_scale") is None else
            effective_mul_scale(tensors["mul_scale"], act_dtype).to(dev), mode=NATIVE,
            weight=packed, aq_scale=shape(ws).to(act_dtype),
            aq_offset=None if off is None else shape(-off.to(dev, F32).reshape(n, -1)).to(act_dtype),
            group_size=0 if gs == k else gs, perm=None if perm is None else perm.to(dev, torch.int64))
        if not exact_in(ws, act_dtype):
            p.notes.append(f"weight_scale rounded to {act_dtype} (the op needs antiquant_scale in the x dtype)")
        if off is not None and not exact_in(off.to(dev, F32), act_dtype):
            p.notes.append(f"weight_offset rounded to {act_dtype} (the op needs antiquant_offset in the x dtype)")
        return p

    def quantize_activation(self, p, x2):
        return {}  # activations stay in float

    def apply(self, p, x2, add_bias=True):
        self.quantize_activation(p, x2)
        xs = apply_mul_scale(x2, p.mul_scale)
        if p.perm is not None:
            xs = xs.index_select(1, p.perm)
        return self.ops().npu_weight_quant_batchmatmul(xs.contiguous(), p.weight, p.aq_scale, p.aq_offset,
                                                       bias=p.bias if add_bias else None,
                                                       antiquant_group_size=p.group_size)
