"""Resolve backend names for a parity run, saying clearly which are not available and why.

Names: ``reference``, ``npu-sim:A2`` / ``npu-sim:A3`` / ``npu-sim:A5`` (the NPU emulator), ``npu``
(real torch_npu), ``cuda``.  Backends come from ``omni_npu_quant.backends.registry.get_backend``.
Device probes are done here, before asking the registry, so that the reason reads like
``cuda: no CUDA device`` rather than a stack trace.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field

import torch

from .. import platform as P
from ..backends.base import LinearBackend
from ..backends.registry import get_backend

__all__ = ["BackendStatus", "resolve_backend", "resolve_backends", "KNOWN_BACKENDS", "parse_backend_list"]

KNOWN_BACKENDS = ("reference", "npu-sim:A2", "npu-sim:A3", "npu-sim:A5", "npu", "cuda")
DEFAULT_BACKENDS = "reference,npu-sim:A2,npu-sim:A5,cuda,npu"


@dataclass
class BackendStatus:
    name: str
    backend: LinearBackend | None
    reason: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def available(self) -> bool:
        return self.backend is not None

    def to_json(self) -> dict:
        return {"name": self.name, "available": self.available, "reason": self.reason, "device": str(self.device)}


def parse_backend_list(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("--backends: give at least one backend name, e.g. reference,npu-sim:A5")
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    if "reference" not in seen:
        seen.insert(0, "reference")  # every comparison is against the reference
    return seen


def _real_torch_npu_reason() -> str | None:
    """None when a real torch_npu with an NPU is usable, else the reason."""
    mod = sys.modules.get("torch_npu")
    if mod is not None and P.is_emulator(mod):
        return "npu: torch_npu not importable (only the omni_npu_quant emulator is loaded; use npu-sim:A2/A3/A5)"
    if mod is None and importlib.util.find_spec("torch_npu") is None:
        return "npu: torch_npu not importable"
    try:
        importlib.import_module("torch_npu")
    except Exception as e:  # noqa: BLE001 - report any import failure verbatim
        return f"npu: torch_npu not importable ({type(e).__name__}: {e})"
    npu = getattr(torch, "npu", None)
    if npu is None or not npu.is_available():
        return "npu: torch_npu imported but no NPU device is available"
    return None


def resolve_backend(name: str) -> BackendStatus:
    if name not in KNOWN_BACKENDS:
        return BackendStatus(name, None, f"{name}: unknown backend; known: {', '.join(KNOWN_BACKENDS)}")
    if name == "cuda" and not torch.cuda.is_available():
        return BackendStatus(name, None, "cuda: no CUDA device")
    if name == "npu":
        why = _real_torch_npu_reason()
        if why:
            return BackendStatus(name, None, why)
    try:
        be = get_backend(name)
    except Exception as e:  # noqa: BLE001 - the registry's own message is the reason
        return BackendStatus(name, None, f"{name}: {e}")
    return BackendStatus(name, be, "", torch.device(be.device))


def resolve_backends(names: list[str]) -> list[BackendStatus]:
    return [resolve_backend(n) for n in names]
