"""Model-level error of a quantized tensor set, through the exact reference backend.

Used for the calibration report (model output error with ``mul_scale = 1`` versus the calibrated
``mul_scale``) and by the tests.  Every quantized linear is swapped, for the duration of a
``with`` block, for a module that runs ``ReferenceBackend.apply`` on the stored tensors.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..backends.registry import get_backend
from ..schemes.registry import get_scheme

__all__ = ["swapped_linears", "model_outputs", "rel_l2", "model_error"]


def _RefLinear(label: str, tensors: dict, act_dtype: torch.dtype, where: str) -> nn.Module:
    """A ``QuantLinear`` on the reference backend: it exposes its stored tensors as (frozen) parameters, so
    models that query ``next(module.parameters())`` (Wan's time embedder) keep working while swapped."""
    from ..integrations.torch.module import QuantLinear

    return QuantLinear(get_scheme(label), tensors, backend=get_backend("reference"), act_dtype=act_dtype, name=where)


@contextlib.contextmanager
def swapped_linears(model: nn.Module, layers: dict, act_dtype: torch.dtype):
    """``layers``: {module name: (label, tensors)}; the originals are restored on exit."""
    saved = []
    try:
        for name, (label, tensors) in layers.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            saved.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, _RefLinear(label, tensors, act_dtype, name))
        yield model
    finally:
        for parent, attr, mod in reversed(saved):
            setattr(parent, attr, mod)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("logits", "sample", "last_hidden_state"):
        v = getattr(out, attr, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    if isinstance(out, dict) and out:
        return _first_tensor(next(iter(out.values())))
    raise TypeError(f"cannot find a tensor in the model output of type {type(out).__name__}")


def model_outputs(model: nn.Module, calls: list) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for args, kwargs in calls:
            outs.append(_first_tensor(model(*args, **kwargs)).detach().float().cpu())
    return outs


def rel_l2(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    num = sum(float(((o.double() - r.double()) ** 2).sum()) for o, r in zip(outs, refs))
    den = sum(float((r.double() ** 2).sum()) for r in refs)
    return math.sqrt(num / max(den, 1e-300))


def model_error(model: nn.Module, calls: list, layers: dict, act_dtype: torch.dtype,
                refs: list[torch.Tensor] | None = None) -> float:
    """Relative L2 error of the model output with ``layers`` quantized, against the float model."""
    if refs is None:
        refs = model_outputs(model, calls)
    with swapped_linears(model, layers, act_dtype):
        outs = model_outputs(model, calls)
    return rel_l2(outs, refs)
