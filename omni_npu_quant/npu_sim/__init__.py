"""A CPU emulator of the ``torch_npu`` ops ``omni_npu_quant`` uses, with Ascend SoC profiles.

* ``make_module(soc)`` -> a module object that looks like ``torch_npu`` for one SoC (A2, A3, A5):
  the quantization ops (``npu_sim.ops``), dtype handles (``float4_e2m1fn_x2 = 296``,
  ``float8_e8m0fnu = 293``, ...), ``Format``, the ``torch_npu.npu`` device queries, and the names
  third-party code imports (see ``npu_sim._module``).
* ``install(soc="A2")`` installs it at once as ``torch_npu`` (every submodule in ``sys.modules``, a
  ``ModuleSpec`` so ``importlib.util.find_spec("torch_npu")`` works, ``torch.npu``,
  ``Tensor.npu()`` / ``Module.npu()``) and returns an ``Installation``.  It stays installed until
  ``Installation.uninstall()``, the end of ``with install(...):``, or ``npu_sim.uninstall()`` --
  never because the returned object was garbage-collected.  Uninstalling restores what was there before.
* ``OMNI_NPU_QUANT_NPU_SIM=A2`` in the environment: ``install_from_env()`` (called by
  ``omni_npu_quant.platform.detect_device``) installs it for the whole process; any other value
  than A2/A3/A5 (case-insensitive) or empty raises ``NpuSimEnvError`` naming the variable.

Tensors stay on the CPU; numerics come from ``omni_npu_quant.numerics``.  Use it to test the NPU
backend in CI, or to see what an Atlas machine will compute: backend name ``"npu-sim:A2"``.
"""
from __future__ import annotations

import os
import sys
import types

import torch

from ._module import SUBMODULES, Format, NpuSimNotEmulated, _device_index, build_package
from .ops import MAX_LAST_DIM, NpuSimError, NpuSimOps
from .profiles import PROFILES, SocProfile, get_profile

__all__ = ["make_module", "install", "uninstall", "installed", "install_from_env", "Installation", "NpuSimError",
           "NpuSimEnvError", "NpuSimNotEmulated", "NpuSimOps", "SocProfile", "PROFILES", "get_profile", "MAX_LAST_DIM",
           "ENV", "Format"]

ENV = "OMNI_NPU_QUANT_NPU_SIM"
_PACKAGES: dict[str, dict[str, types.ModuleType]] = {}
_MISSING = object()


class NpuSimEnvError(ValueError):
    """``OMNI_NPU_QUANT_NPU_SIM`` holds something other than an emulated SoC name."""


def _package(soc: str) -> dict[str, types.ModuleType]:
    prof = get_profile(soc)
    if prof.name not in _PACKAGES:
        _PACKAGES[prof.name] = build_package(prof)
    return _PACKAGES[prof.name]


def make_module(soc: str = "A2") -> types.ModuleType:
    """The emulated ``torch_npu`` module of one SoC (cached per SoC)."""
    return _package(soc)["torch_npu"]


# ---- Tensor.npu / Module.npu ---------------------------------------------------------
def _tensor_npu(self, device=None, non_blocking=False, **kwargs):
    """Copy to the emulated NPU (device 0), i.e. to the CPU; ``self`` if already there (the contract of the
    method torch generates for torch_npu: ``torch/utils/backend_registration.py`` ``wrap_tensor_to``)."""
    _device_index(device, "Tensor.npu")
    return self.to(device="cpu", non_blocking=non_blocking, **kwargs)


def _module_npu(self, device=None):
    """Move parameters and buffers to the emulated NPU (the CPU); returns the module."""
    _device_index(device, "Module.npu")
    return self._apply(lambda t: t.npu(device))


# ---- installation stack ----------------------------------------------------------------
def _snapshot() -> dict:
    return {"modules": {k: sys.modules.get(k, _MISSING) for k in SUBMODULES},
            "torch.npu": getattr(torch, "npu", _MISSING),
            "Tensor.npu": torch.Tensor.__dict__.get("npu", _MISSING),
            "Module.npu": torch.nn.Module.__dict__.get("npu", _MISSING)}


def _set_attr(owner, name, value):
    if value is _MISSING:
        if name in vars(owner):
            delattr(owner, name)
    else:
        setattr(owner, name, value)


def _restore(state: dict) -> None:
    for k, prev in state["modules"].items():
        if prev is _MISSING:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = prev
    _set_attr(torch, "npu", state["torch.npu"])
    _set_attr(torch.Tensor, "npu", state["Tensor.npu"])
    _set_attr(torch.nn.Module, "npu", state["Module.npu"])


def _activate(pkg: dict[str, types.ModuleType]) -> None:
    for k in SUBMODULES:
        sys.modules[k] = pkg[k]
    torch.npu = pkg["torch_npu.npu"]
    torch.Tensor.npu = _tensor_npu
    torch.nn.Module.npu = _module_npu


_STACK: list["Installation"] = []


class Installation:
    """One installation of the emulator (the value ``install()`` returns).

    Active from creation until ``uninstall()`` / the end of its ``with`` block.  It holds no
    finalizer: dropping the last reference to it does not uninstall anything.
    """

    def __init__(self, soc: str):
        pkg = _package(soc)
        self.module = pkg["torch_npu"]
        self.soc = self.module.profile.name
        self._prev = _snapshot()
        _activate(pkg)
        _STACK.append(self)

    @property
    def active(self) -> bool:
        return self in _STACK

    def uninstall(self) -> None:
        """Restore what was installed before this one (and drop any installation made after it)."""
        if self not in _STACK:
            return
        while _STACK:
            if _STACK.pop() is self:
                break
        _restore(self._prev)

    def __enter__(self) -> types.ModuleType:
        if not self.active:
            raise RuntimeError(f"this npu_sim {self.soc} installation was already uninstalled; call "
                               f"npu_sim.install({self.soc!r}) again")
        return self.module

    def __exit__(self, *exc) -> bool:
        self.uninstall()
        return False

    def __repr__(self) -> str:
        return f"<npu_sim.Installation {self.soc} {'active' if self.active else 'uninstalled'}>"


def install(soc: str = "A2") -> Installation:
    """Install the emulator as ``torch_npu`` now; ``with install(...) as torch_npu:`` uninstalls at the block's end."""
    return Installation(soc)


def uninstall() -> bool:
    """Remove every emulator installation, restoring the state before the first; False if none was active."""
    if not _STACK:
        return False
    _STACK[0].uninstall()
    return True


def installed() -> types.ModuleType | None:
    """The emulated ``torch_npu`` module currently installed, or None."""
    return _STACK[-1].module if _STACK else None


def install_from_env() -> types.ModuleType | None:
    """Install for the whole process when ``OMNI_NPU_QUANT_NPU_SIM`` names a SoC; return the module."""
    raw = os.environ.get(ENV)
    soc = (raw or "").strip()
    if not soc:
        return None
    if soc.upper() not in PROFILES:
        raise NpuSimEnvError(f"environment variable {ENV}={raw!r} is not an emulated Ascend SoC: accepted values are "
                             f"{', '.join(sorted(PROFILES))} (case-insensitive); unset it or leave it empty to run "
                             f"without the emulator")
    existing = sys.modules.get("torch_npu")
    if existing is not None and not getattr(existing, "__omni_npu_sim__", False):
        raise RuntimeError(f"{ENV} is set but a real torch_npu is already imported")
    cur = installed()
    if cur is not None and cur.profile.name == soc.upper() and sys.modules.get("torch_npu") is cur:
        return cur
    return install(soc).module
