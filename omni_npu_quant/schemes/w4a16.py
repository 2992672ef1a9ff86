"""W4A16 (msModelSlim ``W4A16``): weight-only int4, ``y = x @ ((W_q - offset) * scale).T + bias``
with a scale (and, asymmetric, an offset) per output channel or per contiguous K-group; activations
stay bf16/fp16 (fp32 on the reference).

Canonical stored tensors (msModelSlim naming, weights (N, K) = (out, in)):

* ``weight`` int8 (N, K), int4 values in [-8, 7], one per byte -- msModelSlim's V0 W4A16 layout (its
  ``save_type=["ascendV1"]`` variant packs two per int8, along K per channel and along N per group;
  that packed form is not read here).  Kernels pack at load: torch_npu ``int4pack`` on the NPU, 8 per
  int32 along K on CUDA.
* ``weight_scale`` (N, G) float, G = 1 per channel or K / group_size.
* ``weight_offset`` (N, G) float, optional (absent or zero = symmetric); msModelSlim's sign: it is
  *subtracted* (the NPU op adds ``antiquant_offset``, so its kernel negates it).
* ``bias`` (N,), ``mul_scale`` (K,): optional, as for W8A16.
* ``input_perm`` int32/int64 (K,), optional: GPTQ act-order.  Column j of ``weight`` multiplies input
  channel ``input_perm[j]`` (``y = x[:, input_perm] @ dequant(weight).T``), so that groups are
  contiguous in the stored order.  Written only by the GPTQ/AutoRound reader for an act-order
  ``g_idx`` (``omni_npu_quant.checkpoint.gptq``).

GPTQ/AutoRound checkpoints convert without loss: ``q_gptq - 8`` and ``zero_gptq - 8`` are the int4
value and the offset, scales are kept in their stored dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics.int4 import INT4_MAX, INT4_MIN, dequantize_weight_int4, quantize_weight_int4
from .base import Scheme, SchemeValidationError, TensorSpec
from .registry import register_scheme
from .int8_base import check_group_count, scale_groups

F32, I8 = torch.float32, torch.int8
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
PERM_DTYPES = (torch.int32, torch.int64)
GROUP_SIZES = (0, 32, 64, 128)  # what quantize_weight produces (0 = per channel); any divisor of K is read


@register_scheme()
@dataclass
class W4A16(Scheme):
    """Options: ``group_size`` (0 = per channel, or 32 / 64 / 128) and ``symmetric`` -- used by
    ``quantize_weight`` only; stored tensor sets of any group size dividing K are read."""

    name = "w4a16"
    label = "W4A16"
    weight_bits = 4
    per_group_scales = True
    weight_only = True
    order = 35
    k_multiple = 8  # int4 packing: 8 values per int32 along K (GPTQ qweight, CUDA), or along N on the NPU

    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self):
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"w4a16: group_size must be one of {GROUP_SIZES} (0 = per channel), got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"w4a16: symmetric must be a bool, got {self.symmetric!r}")

    def tensor_specs(self, n, k, *, has_bias=False, groups: int = 1):
        gdim = 1 if groups > 1 else None
        return [
            TensorSpec("weight", (I8,), (n, k), input_dim=1, output_dim=0, doc="int4 values in [-8, 7], one per int8"),
            TensorSpec("weight_scale", FLOATS, (n, groups), input_dim=gdim, output_dim=0),
            TensorSpec("weight_offset", FLOATS, (n, groups), input_dim=gdim, output_dim=0, optional=True,
                       doc="subtracted: w = (q - offset) * scale"),
            TensorSpec("bias", FLOATS, (n,), output_dim=0, optional=True),
            TensorSpec("mul_scale", FLOATS, (k,), input_dim=0, optional=True),
            TensorSpec("input_perm", PERM_DTYPES, (k,), optional=True,
                       doc="GPTQ act-order: stored column j multiplies input channel input_perm[j]"),
        ]

    def specs_for(self, tensors, n, k):
        return self.tensor_specs(n, k, has_bias="bias" in tensors, groups=scale_groups(tensors))

    def check_values(self, tensors, n, k, loc):
        super().check_values(tensors, n, k, loc)
        check_group_count(k, scale_groups(tensors), loc)
        w = tensors["weight"]
        if w.numel():
            lo, hi = int(w.min()), int(w.max())
            if lo < INT4_MIN or hi > INT4_MAX:
                raise SchemeValidationError(f"{loc}tensor 'weight' holds values in [{lo}, {hi}]; W4A16 int4 values "
                                            f"must lie in [{INT4_MIN}, {INT4_MAX}]")
        for name in ("weight_scale", "weight_offset"):
            t = tensors.get(name)
            if t is not None and not bool(torch.isfinite(t.float()).all()):
                raise SchemeValidationError(f"{loc}tensor '{name}' has non-finite values")
        perm = tensors.get("input_perm")
        if perm is not None:
            if not torch.equal(torch.sort(perm.to(torch.int64)).values, torch.arange(k, dtype=torch.int64)):
                raise SchemeValidationError(f"{loc}tensor 'input_perm' must be a permutation of 0..{k - 1}")

    @staticmethod
    def group_size_of(tensors, k: int) -> int:
        """K per stored scale group (K when per channel)."""
        g = scale_groups(tensors)
        return k if g <= 1 else k // g

    @staticmethod
    def offset_of(tensors) -> torch.Tensor | None:
        """``weight_offset`` or None when absent or all zero (symmetric)."""
        off = tensors.get("weight_offset")
        if off is None or not bool((off.float() != 0).any()):
            return None
        return off

    def quantize_weight(self, weight, bias=None, **calib):
        q, s, off = quantize_weight_int4(weight, self.group_size, self.symmetric)
        out = {"weight": q, "weight_scale": s}
        out["weight_offset"] = off if not self.symmetric else torch.zeros_like(s)
        if bias is not None:
            out["bias"] = bias.to(F32)
        return out

    def dequantize_weight(self, tensors, k=None):
        """fp32 (N, K) weight in the input-channel order of x (``input_perm`` undone)."""
        w = dequantize_weight_int4(tensors["weight"], tensors["weight_scale"], tensors.get("weight_offset"))
        perm = tensors.get("input_perm")
        if perm is None:
            return w
        out = torch.empty_like(w)
        out[:, perm.to(torch.int64)] = w
        return out

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "group_size": self.group_size, "symmetric": self.symmetric}
