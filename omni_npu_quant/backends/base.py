"""The one backend interface.

A backend turns a validated tensor set into a device-ready ``PreparedLinear`` once
(``prepare``: transposes, format casts, scale layouts, decode-at-load fallbacks) and runs the
linear (``apply``).  ``quantize_activation`` exposes the activation quantizer's raw output
(the bytes the device op would produce) so parity checks can compare backends byte for byte.
``capability`` says, without touching tensors, whether and how a scheme runs here.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch

from ..schemes.base import Scheme

__all__ = ["Capability", "PreparedLinear", "LinearBackend", "NATIVE", "FALLBACK", "UNSUPPORTED"]

NATIVE = "native"
FALLBACK = "exact fallback"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Capability:
    mode: str  # NATIVE | FALLBACK | UNSUPPORTED
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.mode != UNSUPPORTED


@dataclass
class PreparedLinear:
    """A linear layer ready for ``apply`` on one backend."""

    scheme: Scheme
    backend: str
    n: int
    k: int
    act_dtype: torch.dtype
    tensors: dict[str, Any] = field(default_factory=dict)  # backend-specific, prepared once
    mode: str = NATIVE
    notes: list[str] = field(default_factory=list)


class LinearBackend(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def capability(self, scheme: Scheme) -> Capability: ...

    @abc.abstractmethod
    def prepare(self, scheme: Scheme, tensors: dict[str, torch.Tensor], act_dtype: torch.dtype, *,
                k: int | None = None, where: str = "") -> PreparedLinear: ...

    @abc.abstractmethod
    def apply(self, prepared: PreparedLinear, x: torch.Tensor, *, add_bias: bool = True) -> torch.Tensor: ...

    @abc.abstractmethod
    def quantize_activation(self, prepared: PreparedLinear, x: torch.Tensor) -> dict[str, torch.Tensor]: ...
