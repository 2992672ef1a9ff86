"""Backend lookup and selection.

* ``get_backend(name)``: ``"reference"``, ``"npu"`` (real torch_npu, SoC detected), ``"npu-sim:A2"`` /
  ``"npu-sim:A3"`` / ``"npu-sim:A5"`` (the NPU kernels on the CPU emulator of that SoC), ``"cuda"``.
  ``name@kernel`` pins one kernel (e.g. ``cuda@reference.mx``).
* ``select_backend(scheme, device=None) -> (backend, Capability)``: walks the device's backends
  (npu -> [npu, reference]; cuda -> [cuda]; cpu -> [reference]) and returns the first whose
  capability is not "unsupported"; refusals are logged with their reasons.
* ``OMNI_NPU_QUANT_BACKEND`` (same names as ``get_backend``) overrides the walk: ``backend_override()``
  is the one place that reads it.
"""
from __future__ import annotations

import logging
import os

from ..platform import BACKEND_ENV, DeviceInfo, detect_device, device_from_name
from ..schemes.base import Scheme
from .backend import Backend, CudaBackend, NpuBackend, ReferenceBackend
from .base import Capability

__all__ = ["get_backend", "select_backend", "candidates_for", "backend_override", "backend_for_device",
           "BACKEND_NAMES", "BackendUnavailable"]

log = logging.getLogger("omni_npu_quant.backends")

BACKEND_NAMES = ("reference", "npu", "npu-sim:A2", "npu-sim:A3", "npu-sim:A5", "cuda")
_CACHE: dict[str, Backend] = {}


class BackendUnavailable(RuntimeError):
    """A named backend cannot be constructed here."""


def backend_override() -> str | None:
    """The value of ``OMNI_NPU_QUANT_BACKEND`` (validated), or None when unset."""
    raw = os.environ.get(BACKEND_ENV, "").strip()
    if not raw:
        return None
    _canonical(raw, what=f"{BACKEND_ENV}={raw!r}")
    return raw


def _canonical(name: str, what: str = "") -> tuple[str, str | None]:
    base, _, kernel = name.strip().partition("@")
    base = base.strip()
    if base.lower().startswith("npu-sim:"):
        base = "npu-sim:" + base.split(":", 1)[1].upper()
    else:
        base = base.lower()
    if base not in BACKEND_NAMES:
        raise ValueError(f"{what or repr(name)}: unknown backend {base!r}; known: {', '.join(BACKEND_NAMES)} "
                         f"(optionally name@kernel)")
    if kernel:
        from ..kernels.registry import kernel_class

        kernel_class(kernel.strip())  # raises with the known names
    return base, (kernel.strip() or None)


def _make(base: str, kernel: str | None) -> Backend:
    if base == "reference":
        return ReferenceBackend(kernel=kernel)
    if base == "npu":
        return NpuBackend(kernel=kernel)
    if base.startswith("npu-sim:"):
        return NpuBackend(base.split(":", 1)[1], sim=True, kernel=kernel)
    return CudaBackend(kernel=kernel)


def get_backend(name: str) -> Backend:
    """A backend instance by name (cached per name)."""
    base, kernel = _canonical(name)
    key = base + (f"@{kernel}" if kernel else "")
    if key not in _CACHE:
        _CACHE[key] = _make(base, kernel)
    return _CACHE[key]


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
        return ["cuda"]
    return ["reference"]


def backend_for_device(device: DeviceInfo) -> Backend:
    """The first backend of a device, bound to that device (a named profile such as ``A2`` or ``sm90``
    gives a backend for that family, used for capability questions)."""
    if device.kind == "npu":
        if device.simulated:
            return get_backend(f"npu-sim:{device.family}")
        if device.probed:
            return get_backend("npu")
        return Backend("npu", device, "npu")
    if device.kind == "cuda":
        return get_backend("cuda") if device.probed else Backend("cuda", device, "cuda")
    return get_backend("reference")


def select_backend(scheme, device=None) -> tuple[Backend, Capability]:
    """First capable backend for ``scheme`` on ``device`` (None = this machine, or the env override)."""
    sch = _as_scheme(scheme)
    override = backend_override() if device is None else None
    if override:
        be = get_backend(override)
        cap = be.capability(sch)
        if not cap.ok:
            raise RuntimeError(f"{BACKEND_ENV}={override}: backend '{be.name}' cannot run scheme {sch.name}: {cap.reason}")
        log.info("%s=%s: scheme %s runs on %s (%s)", BACKEND_ENV, override, sch.name, be.name, cap.mode)
        return be, cap
    dev = _as_device(device)
    refusals: list[str] = []
    for i, name in enumerate(candidates_for(dev)):
        be = backend_for_device(dev) if i == 0 else get_backend(name)
        cap = be.capability(sch)
        if cap.ok:
            if refusals:
                log.warning("scheme %s on %s: falling back to backend '%s' (%s); refused: %s",
                            sch.name, dev.label, be.name, cap.mode, "; ".join(refusals))
            return be, cap
        refusals.append(f"{name}: {cap.reason}")
    raise RuntimeError(f"no backend can run scheme {sch.name} on {dev.label}: " + "; ".join(refusals))
