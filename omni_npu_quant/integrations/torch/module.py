"""``QuantLinear``: an ``nn.Module`` that runs a quantized tensor set on one backend."""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from ...backends.base import UNSUPPORTED, Capability, LinearBackend, PreparedLinear
from ...schemes.base import Scheme

__all__ = ["QuantLinear", "resolve_backend", "quantized_state_keys"]

log = logging.getLogger("omni_npu_quant.integrations.torch")


def resolve_backend(scheme: Scheme, backend=None, device=None) -> tuple[LinearBackend, Capability]:
    """The backend object for ``scheme``: a given instance, a name, or the platform dispatcher's choice."""
    from ...backends.registry import get_backend, select_backend

    if isinstance(backend, LinearBackend):
        cap = backend.capability(scheme)
    elif backend is None:
        backend, cap = select_backend(scheme, device)
    else:
        backend = get_backend(str(backend))
        cap = backend.capability(scheme)
    if cap.mode == UNSUPPORTED:
        raise RuntimeError(f"backend '{backend.name}' cannot run scheme {scheme.name}: {cap.reason}")
    return backend, cap


def _device_hint(device: torch.device):
    """The device the dispatcher should pick for: the tensors' device, unless the env override is set."""
    from ...backends.registry import backend_override

    return None if backend_override() else device.type


class QuantLinear(nn.Module):
    """A quantized linear layer.

    The stored tensor set (msModelSlim suffix names: ``weight``, ``weight_scale``, ``bias``,
    ``mul_scale``, ...) is registered on the module as parameters with ``requires_grad=False``,
    floating-point tensors first, so module queries work as on an ``nn.Linear``:
    ``parameters()`` / ``next(m.parameters())`` (a float tensor whenever the set holds one, e.g. the
    bias or a float scale), ``named_parameters()``, a diffusers model's ``.dtype`` / ``.device``.
    No full-precision copy of the weight is kept here (what the backend prepares is its own
    business: ``prepared``).  ``state_dict()`` holds the stored set under ``<prefix>.<suffix>``;
    ``load_state_dict`` checks dtypes and shapes, validates and prepares again; ``load_quantized`` reads a
    ``save_pretrained`` directory back (the per-layer labels are recorded in the model config's
    ``omni_npu_quant`` entry by ``quantize_`` / ``load_quantized``).

    ``tensors`` is a read-only view ``{suffix: tensor}`` of the registered tensors.  Moving the
    module (``.to(device)``) moves the stored tensors and prepares them again; casting it to a
    floating dtype (``.to(torch.float16)``) changes the activation dtype only -- stored scales and
    weights never change dtype.  An input of another floating dtype than the activation dtype is
    cast to it, and the output is returned in the input's dtype (as a drop-in for ``nn.Linear``
    in models that cast e.g. a timestep to their embedder's parameter dtype).
    """

    def __init__(self, scheme: Scheme, tensors: dict[str, torch.Tensor], *, backend=None,
                 act_dtype: torch.dtype = torch.bfloat16, name: str = "", k: int | None = None):
        super().__init__()
        self.scheme = scheme
        self.layer_name = name
        self._requested_backend = backend
        self.act_dtype = act_dtype
        tensors = dict(tensors)
        n, k = scheme.validate(tensors, k=k, where=name or "QuantLinear")
        self._register_stored(tensors)
        self.in_features, self.out_features = k, n
        self.backend, self.capability = resolve_backend(scheme, backend, _device_hint(tensors["weight"].device))
        self.prepared: PreparedLinear = self.backend.prepare(scheme, self.tensors, act_dtype, k=k, where=name)

    # -- stored tensors as (frozen) parameters --------------------------------------------------
    def _register_stored(self, tensors: dict[str, torch.Tensor]) -> None:
        for key in list(getattr(self, "_stored", ())):
            self._parameters.pop(key, None)
        bad = [s for s in tensors if not s.isidentifier() or hasattr(type(self), s)]
        if bad:
            raise ValueError(f"{self.layer_name or 'QuantLinear'}: stored tensor name(s) {bad} cannot be module "
                             f"attributes")
        # floating tensors first: next(m.parameters()) then reports a float dtype, as models expect
        order = sorted(tensors, key=lambda s: (not tensors[s].is_floating_point(), s != "bias"))
        for s in order:
            t = tensors[s]
            self.register_parameter(s, nn.Parameter(t.detach(), requires_grad=False))
        self._stored = tuple(order)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """``{suffix: stored tensor}`` (the registered parameters' data; do not modify in place)."""
        return {s: self._parameters[s].data for s in self._stored}

    @property
    def weight_device(self) -> torch.device:
        return self._parameters["weight"].device

    # -- torch.nn.Module plumbing ---------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # the stored set under its AscendV1 suffixes (``<prefix>.weight``, ``<prefix>.weight_scale``, ...): a model's
        # state_dict() / save_pretrained() carries the quantized layers; load_quantized reads them back with the
        # per-layer labels that quantize_ / load_quantized record in the model's config (``omni_npu_quant``)
        for s in self._stored:
            t = self._parameters[s]
            destination[prefix + s] = t if keep_vars else t.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        mine = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        where = prefix.rstrip(".") or "QuantLinear"
        for s in self._stored:
            if s not in mine:
                missing_keys.append(prefix + s)
        for s in mine:
            if s not in self._stored:
                unexpected_keys.append(prefix + s)
        new = dict(self.tensors)
        for s, v in mine.items():
            if s not in new:
                continue
            cur = new[s]
            if v.dtype != cur.dtype or tuple(v.shape) != tuple(cur.shape):
                error_msgs.append(f"{where}: state-dict tensor '{s}' is {v.dtype} {list(v.shape)}, the {self.scheme.name} "
                                  f"layer stores {cur.dtype} {list(cur.shape)}")
                return
            new[s] = v.detach().to(cur.device)
        if any(s in mine for s in self._stored):
            try:
                self.scheme.validate(new, k=self.in_features, where=where)
            except ValueError as e:
                error_msgs.append(str(e))
                return
            self._register_stored(new)
            self.prepared = self.backend.prepare(self.scheme, self.tensors, self.act_dtype, k=self.in_features,
                                                 where=self.layer_name)

    def _apply(self, fn, recurse=True):
        # learn the requested device / dtype from a probe; never cast stored tensors
        dev = self.weight_device
        probe = fn(torch.empty(0, dtype=self.act_dtype, device=dev))
        moved = probe.device != dev
        new_dtype = probe.dtype if probe.is_floating_point() else self.act_dtype
        if moved:
            self._register_stored({k: v.to(probe.device) for k, v in self.tensors.items()})
        if moved or new_dtype != self.act_dtype:
            self.act_dtype = new_dtype
            self.prepared = self.backend.prepare(self.scheme, self.tensors, self.act_dtype, k=self.in_features,
                                                 where=self.layer_name)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.layer_name or 'QuantLinear'}: input has {x.shape[-1]} features, "
                             f"the layer expects {self.in_features}")
        in_dtype = x.dtype
        if x.is_floating_point() and in_dtype != self.act_dtype:
            return self.backend.apply(self.prepared, x.to(self.act_dtype)).to(in_dtype)
        return self.backend.apply(self.prepared, x)

    def quantize_activation(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backend.quantize_activation(self.prepared, x)

    @property
    def mode(self) -> str:
        return self.prepared.mode

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self._stored}, scheme={self.scheme.name}, backend={self.backend.name}, "
                f"mode={self.prepared.mode}, act_dtype={str(self.act_dtype).replace('torch.', '')}")


def quantized_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys that belong to a ``QuantLinear``'s stored tensor set (not float tensors)."""
    return {f"{n}.{s}" if n else s for n, m in model.named_modules() if isinstance(m, QuantLinear)
            for s in m._stored}
