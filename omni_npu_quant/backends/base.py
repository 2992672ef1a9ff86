"""The backend interface: a *backend* is a device target a user names (``reference``,
``npu-sim:A2``, ``npu``, ``cuda``) plus its ordered kernel candidates.

``capability(scheme)`` says, without touching tensors, whether and how a scheme runs here (and
which kernel would run it); ``prepare`` validates a tensor set and hands it to the first kernel
that accepts the layer; ``apply`` / ``quantize_activation`` run that kernel.  The compute lives in
``omni_npu_quant.kernels``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from ..kernels.base import FALLBACK, NATIVE, UNSUPPORTED, PreparedLinear
from ..schemes.base import Scheme

__all__ = ["Capability", "PreparedLinear", "LinearBackend", "NATIVE", "FALLBACK", "UNSUPPORTED"]


@dataclass(frozen=True)
class Capability:
    mode: str  # NATIVE | FALLBACK | UNSUPPORTED
    reason: str = ""
    kernel: str = ""  # the kernel that would run the scheme ("" when unsupported)
    refusals: tuple[tuple[str, str], ...] = ()  # (kernel, why) of the candidates tried before it
    verified: str = ""

    @property
    def ok(self) -> bool:
        return self.mode != UNSUPPORTED


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
