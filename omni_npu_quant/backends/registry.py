"""Backend lookup and selection.

* ``get_backend(name)``: ``"reference"``, ``"npu"`` (real torch_npu, SoC detected), ``"npu-sim:A2"`` /
  ``"npu-sim:A3"`` / ``"npu-sim:A5"`` (NPU backend on the CPU emulator of that SoC), ``"cuda"``
  (``omni_npu_quant.backends.cuda``, imported lazily; absent -> a clear error).
* ``select_backend(scheme, device=None) -> (backend, Capability)``: walks the ordered candidate list of
  the device (npu -> [npu, reference]; cuda -> [cuda, reference]; cpu -> [reference]) and returns the
  first backend whose ``capability(scheme)`` is not "unsupported"; every refusal is logged with its
  reason.  ``OMNI_NPU_QUANT_BACKEND`` (same names as ``get_backend``) overrides the walk.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

from ..platform import BACKEND_ENV, DeviceInfo, detect_device, device_from_name
from ..schemes.base import Scheme
from .base import UNSUPPORTED, Capability, LinearBackend

__all__ = ["get_backend", "select_backend", "candidates_for", "BACKEND_NAMES", "BackendUnavailable"]

log = logging.getLogger("omni_npu_quant.backends")

BACKEND_NAMES = ("reference", "npu", "npu-sim:A2", "npu-sim:A3", "npu-sim:A5", "cuda")
_CACHE: dict[str, LinearBackend] = {}


class BackendUnavailable(RuntimeError):
    """A named backend cannot be constructed here (missing package, no device)."""


def _make_reference() -> LinearBackend:
    from .reference import ReferenceBackend

    return ReferenceBackend()


def _make_npu(soc: str | None = None, sim: bool = False) -> LinearBackend:
    from .npu import NpuBackend

    return NpuBackend(soc=soc, sim=sim)


def _make_cuda() -> LinearBackend:
    try:
        from .cuda import CudaBackend  # owned by the CUDA backend; optional
    except ImportError as e:
        raise BackendUnavailable(f"CUDA backend not available ({e}); install triton and use a CUDA build of torch, "
                                 f"or pick backend 'reference'") from e
    return CudaBackend()


def get_backend(name: str) -> LinearBackend:
    """A backend instance by name (cached per name)."""
    key = name.strip()
    if key.lower().startswith("npu-sim:"):
        key = "npu-sim:" + key.split(":", 1)[1].upper()
    else:
        key = key.lower()
    if key in _CACHE:
        return _CACHE[key]
    makers: dict[str, Callable[[], LinearBackend]] = {
        "reference": _make_reference,
        "npu": _make_npu,
        "npu-sim:A2": lambda: _make_npu("A2", True),
        "npu-sim:A3": lambda: _make_npu("A3", True),
        "npu-sim:A5": lambda: _make_npu("A5", True),
        "cuda": _make_cuda,
    }
    if key not in makers:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
    be = makers[key]()
    _CACHE[key] = be
    return be


def _as_scheme(scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    from ..schemes.registry import get_scheme

    return get_scheme(str(scheme))


def _as_device(device) -> DeviceInfo:
    if device is None:
        return detect_device()
    if isinstance(device, DeviceInfo):
        return device
    if hasattr(device, "type") and not isinstance(device, str):  # torch.device
        device = device.type
    d = str(device)
    if d in ("npu", "cuda") or d.startswith("npu:") or d.startswith("cuda:"):
        det = detect_device()
        kind = d.split(":")[0]
        return det if det.kind == kind else DeviceInfo(kind, None, d)
    return device_from_name(d)


def candidates_for(device: DeviceInfo) -> list[str]:
    """Ordered backend names tried for a device."""
    if device.kind == "npu":
        first = f"npu-sim:{device.family}" if device.simulated else "npu"
        return [first, "reference"]
    if device.kind == "cuda":
        return ["cuda", "reference"]
    return ["reference"]


def _capability_of(name: str, scheme: Scheme, device: DeviceInfo) -> tuple[LinearBackend | None, Capability]:
    try:
        if name == "npu" and device.family is not None and not device.simulated:
            key = f"npu@{device.family}"  # a named SoC (or the detected one): real torch_npu at prepare time
            if key not in _CACHE:
                _CACHE[key] = _make_npu(device.family, False)
            be = _CACHE[key]
        else:
            be = get_backend(name)
    except (BackendUnavailable, ImportError) as e:
        return None, Capability(UNSUPPORTED, str(e))
    return be, be.capability(scheme)


def select_backend(scheme, device=None) -> tuple[LinearBackend, Capability]:
    """First capable backend for ``scheme`` on ``device`` (None = this machine, or the env override)."""
    sch = _as_scheme(scheme)
    override = os.environ.get(BACKEND_ENV, "").strip()
    if device is None and override:
        be = get_backend(override)
        cap = be.capability(sch)
        if not cap.ok:
            raise RuntimeError(f"{BACKEND_ENV}={override}: backend '{be.name}' cannot run scheme {sch.name}: {cap.reason}")
        log.info("%s=%s: scheme %s runs on %s (%s)", BACKEND_ENV, override, sch.name, be.name, cap.mode)
        return be, cap
    dev = _as_device(device)
    refusals: list[str] = []
    for name in candidates_for(dev):
        be, cap = _capability_of(name, sch, dev)
        if be is not None and cap.ok:
            if refusals:
                log.warning("scheme %s on %s: falling back to backend '%s' (%s); refused: %s",
                            sch.name, dev.label, be.name, cap.mode, "; ".join(refusals))
            return be, cap
        refusals.append(f"{name}: {cap.reason}")
    raise RuntimeError(f"no backend can run scheme {sch.name} on {dev.label}: " + "; ".join(refusals))
