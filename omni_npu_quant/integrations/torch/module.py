"""``QuantLinear``: an ``nn.Module`` that runs a quantized tensor set on one backend."""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from ...backends.base import UNSUPPORTED, Capability, LinearBackend, PreparedLinear
from ...schemes.base import Scheme

__all__ = ["QuantLinear", "resolve_backend"]

log = logging.getLogger("omni_npu_quant.integrations.torch")


def resolve_backend(scheme: Scheme, backend=None, device=None) -> tuple[LinearBackend, Capability]:
    """The backend object for ``scheme``: a given instance, a name, or the platform dispatcher's choice."""
    if isinstance(backend, LinearBackend):
        cap = backend.capability(scheme)
    else:
        try:
            from ...backends.registry import get_backend, select_backend
        except ImportError:  # the dispatcher is optional: the exact reference always works
            from ...backends.reference import ReferenceBackend

            backend = ReferenceBackend()
            cap = backend.capability(scheme)
        else:
            if backend is None:
                backend, cap = select_backend(scheme, device)
            else:
                backend = get_backend(str(backend))
                cap = backend.capability(scheme)
    if cap.mode == UNSUPPORTED:
        raise RuntimeError(f"backend '{backend.name}' cannot run scheme {scheme.name}: {cap.reason}")
    return backend, cap


def _device_hint(device: torch.device):
    """The device the dispatcher should pick for: the tensors' device, unless the env override is set."""
    try:
        from ...platform import BACKEND_ENV
    except ImportError:
        return device.type
    return None if os.environ.get(BACKEND_ENV, "").strip() else device.type


class QuantLinear(nn.Module):
    """A quantized linear layer.

    Holds the stored tensor set (``tensors``, msModelSlim suffix names, on the module's device),
    the ``scheme``, the ``backend`` object and its ``prepared`` form (``PreparedLinear``).  Moving the
    module (``.to(device)``) moves the tensor set and prepares it again; casting it to a floating
    dtype (``.to(torch.float16)``) changes the activation dtype only -- stored scales never change.
    """

    def __init__(self, scheme: Scheme, tensors: dict[str, torch.Tensor], *, backend=None,
                 act_dtype: torch.dtype = torch.bfloat16, name: str = "", k: int | None = None):
        super().__init__()
        self.scheme = scheme
        self.layer_name = name
        self.tensors = dict(tensors)
        self._requested_backend = backend
        self.act_dtype = act_dtype
        n, k = scheme.validate(self.tensors, k=k, where=name or "QuantLinear")
        self.in_features, self.out_features = k, n
        self.backend, self.capability = resolve_backend(scheme, backend, _device_hint(self.tensors["weight"].device))
        self.prepared: PreparedLinear = self.backend.prepare(scheme, self.tensors, act_dtype, k=k, where=name)

    # -- torch.nn.Module plumbing ---------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        # learn the requested device / dtype from a probe; never cast stored scales
        probe = fn(torch.empty(0, dtype=self.act_dtype, device=self.tensors["weight"].device))
        moved = probe.device != self.tensors["weight"].device
        new_dtype = probe.dtype if probe.is_floating_point() else self.act_dtype
        if moved:
            self.tensors = {k: v.to(probe.device) for k, v in self.tensors.items()}
        if moved or new_dtype != self.act_dtype:
            self.act_dtype = new_dtype
            self.prepared = self.backend.prepare(self.scheme, self.tensors, self.act_dtype, k=self.in_features,
                                                 where=self.layer_name)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.layer_name or 'QuantLinear'}: input has {x.shape[-1]} features, "
                             f"the layer expects {self.in_features}")
        return self.backend.apply(self.prepared, x)

    def quantize_activation(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backend.quantize_activation(self.prepared, x)

    @property
    def mode(self) -> str:
        return self.prepared.mode

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.tensors}, scheme={self.scheme.name}, backend={self.backend.name}, "
                f"mode={self.prepared.mode}, act_dtype={str(self.act_dtype).replace('torch.', '')}")
