"""Kernels: one file per scheme family and device kind (``reference/``, ``npu/``, ``cuda/``), each
registered with ``registry.register_kernel`` and saying why it refuses (``is_supported``,
``can_implement``).  ``reference_linear`` is the exact reference forward of any scheme."""
from __future__ import annotations

import torch

from .base import FALLBACK, NATIVE, UNSUPPORTED, KernelPrepareError, KernelRefusal, LinearKernel, PreparedLinear, Target

__all__ = ["LinearKernel", "PreparedLinear", "Target", "KernelPrepareError", "KernelRefusal", "NATIVE", "FALLBACK",
           "UNSUPPORTED", "reference_linear"]


def reference_linear(scheme, x: torch.Tensor, tensors: dict[str, torch.Tensor], *, add_bias: bool = True) -> torch.Tensor:
    """``y = linear(x)`` of a stored tensor set through the exact reference kernels (CPU)."""
    from ..backends.registry import get_backend

    be = get_backend("reference")
    return be.apply(be.prepare(scheme, tensors, x.dtype), x, add_bias=add_bias)
