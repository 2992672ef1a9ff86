"""The one kernel interface.

A *kernel* implements one scheme family on one kind of device (``device_kind``: ``cpu`` for the
exact reference, which also runs on any torch device as a fallback, ``npu``, ``cuda``).  The
kernel registry (``registry.py``) keeps an ordered candidate list per device kind; the first
kernel whose ``is_supported(device)`` and ``can_implement(scheme, n, k, act_dtype)`` both accept
wins, and every refusal is kept with its reason (shown by ``env`` and ``inspect``).

* ``prepare`` turns a validated tensor set into the kernel's own typed ``PreparedLinear``
  subclass once (transposes, format casts, scale layouts, decode-at-load fallbacks).
* ``quantize_activation(p, x2)`` is the activation quantizer the kernel's ``apply`` runs, and
  returns its raw output in the device op's layout (``{}`` for kernels that keep activations in
  float); ``apply(p, x2, add_bias)`` calls it and then multiplies.  ``x2`` is 2-D (M, K) in the
  activation dtype; the backend facade (``omni_npu_quant.backends``) reshapes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..platform import DeviceInfo
from ..schemes.base import Scheme

__all__ = ["NATIVE", "FALLBACK", "UNSUPPORTED", "Target", "PreparedLinear", "LinearKernel", "KernelPrepareError",
           "KernelRefusal"]

NATIVE = "native"
FALLBACK = "exact fallback"
UNSUPPORTED = "unsupported"


class KernelPrepareError(ValueError):
    """A layer no kernel of a backend can take (shape / dtype guard); the message names the layer."""


class KernelRefusal(Exception):
    """Raised by ``prepare`` when a kernel sees, in the tensors themselves, a layer it cannot run
    (e.g. a per-group scale layout); the backend then tries its next candidate."""


@dataclass(frozen=True)
class Target:
    """Where kernels run: the device (family, emulated or not) and the torch device of the tensors."""

    device: DeviceInfo
    torch_device: str = "cpu"  # "cpu" (reference, emulated NPU, Triton interpreter), "npu", "cuda", "cuda:1"
    options: dict = field(default_factory=dict, compare=False, hash=False)  # backend options kernels may read

    @property
    def kind(self) -> str:
        return self.device.kind


@dataclass
class PreparedLinear:
    """A linear layer ready for ``apply``.  Each kernel subclasses it with its own typed fields."""

    scheme: Scheme
    kernel: "LinearKernel"
    n: int
    k: int
    act_dtype: torch.dtype
    bias: torch.Tensor | None = None
    mul_scale: torch.Tensor | None = None  # effective smoothing multiplier (fp32), or None
    mode: str = NATIVE
    notes: list[str] = field(default_factory=list)  # deviations worth a warning (logged once)
    refusals: list[tuple[str, str]] = field(default_factory=list)  # (kernel, why) tried before this one
    backend: str = ""  # the backend facade's name, set by it

    @property
    def kernel_name(self) -> str:
        return self.kernel.name


class LinearKernel(abc.ABC):
    """Base class of every kernel.  Subclasses set the class attributes and implement the hooks."""

    name: ClassVar[str] = ""  # e.g. "npu.int8_dynamic"
    device_kind: ClassVar[str] = ""  # "cpu" | "npu" | "cuda"
    schemes: ClassVar[tuple[str, ...]] = ()  # scheme names this kernel implements
    summary: ClassVar[str] = ""  # how it computes (the capability table's "how")
    verified: ClassVar[str] = ""  # how the claim was checked

    def __init__(self, target: Target):
        self.target = target

    # ---- selection ------------------------------------------------------------------
    @classmethod
    def is_supported(cls, device: DeviceInfo) -> tuple[bool, str]:
        """Whether this kernel can run on ``device`` at all (family, and packages when probed)."""
        return True, ""

    def can_implement(self, scheme: Scheme, n: int | None = None, k: int | None = None,
                      act_dtype: torch.dtype | None = None) -> tuple[bool, str]:
        """Whether this kernel implements ``scheme`` (and, when given, an (N, K) layer in ``act_dtype``)."""
        if scheme.name not in self.schemes:
            return False, f"{self.name} implements {', '.join(self.schemes)}, not {scheme.name}"
        if n is not None and k is not None:
            bad = scheme.shape_problem(n, k)
            if bad:
                return False, bad
        return True, ""

    def mode(self, scheme: Scheme) -> tuple[str, str]:
        """(NATIVE | FALLBACK, why) for a scheme this kernel implements."""
        return NATIVE, self.summary

    # ---- compute --------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, scheme: Scheme, tensors: dict[str, torch.Tensor], act_dtype: torch.dtype, n: int, k: int,
                where: str) -> PreparedLinear: ...

    @abc.abstractmethod
    def quantize_activation(self, p: PreparedLinear, x2: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def apply(self, p: PreparedLinear, x2: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """(M, K) activation -> (M, N) output (any float dtype; the facade casts)."""

    # ---- helpers ----------------------------------------------------------------------
    @property
    def dev(self) -> str:
        return self.target.torch_device

    def __repr__(self) -> str:
        return f"<kernel {self.name} on {self.target.device.label}>"
