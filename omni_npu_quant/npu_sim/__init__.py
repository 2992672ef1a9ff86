"""A CPU emulator of the ``torch_npu`` ops ``omni_npu_quant`` uses, with Ascend SoC profiles.

* ``make_module(soc)`` -> a module object that looks like ``torch_npu`` for one SoC (A2, A3, A5):
  the quantization ops (``npu_sim.ops``), dtype handles (``float4_e2m1fn_x2 = 296``,
  ``float8_e8m0fnu = 293``, ...), and the ``torch_npu.npu`` queries (``is_available``,
  ``get_soc_version``, ``get_device_name``, ``device_count``).
* ``install(soc="A2")``: context manager that puts it into ``sys.modules["torch_npu"]`` (and
  ``torch.npu``) and restores the previous state on exit.
* ``OMNI_NPU_QUANT_NPU_SIM=A2`` in the environment: ``install_from_env()`` (called by
  ``omni_npu_quant.platform.detect_device``) installs it for the whole process.

Tensors stay on the CPU; numerics come from ``omni_npu_quant.numerics``.  Use it to test the NPU
backend in CI, or to see what an Atlas machine will compute: backend name ``"npu-sim:A2"``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types

import torch

from ..numerics.constants import (NPU_FLOAT4_E1M2FN_X2, NPU_FLOAT4_E2M1FN_X2, NPU_FLOAT8_E4M3FN, NPU_FLOAT8_E5M2,
                                  NPU_FLOAT8_E8M0FNU, NPU_HIFLOAT8)
from .ops import MAX_LAST_DIM, NpuSimError, NpuSimOps
from .profiles import PROFILES, SocProfile, get_profile

__all__ = ["make_module", "install", "install_from_env", "NpuSimError", "NpuSimOps", "SocProfile", "PROFILES",
           "get_profile", "MAX_LAST_DIM", "ENV"]

ENV = "OMNI_NPU_QUANT_NPU_SIM"
_MODULES: dict[str, types.ModuleType] = {}
_OPS = ("npu_dynamic_quant", "npu_quantize", "npu_trans_quant_param", "npu_quant_matmul", "npu_dynamic_mx_quant",
        "npu_dynamic_dual_level_mx_quant", "npu_dual_level_quant_matmul", "npu_weight_quant_batchmatmul",
        "npu_format_cast", "get_npu_format", "npu_dtype_cast")


def make_module(soc: str = "A2") -> types.ModuleType:
    """The emulated ``torch_npu`` module of one SoC (cached per SoC)."""
    prof = get_profile(soc)
    if prof.name in _MODULES:
        return _MODULES[prof.name]
    ops = NpuSimOps(prof)
    mod = types.ModuleType("torch_npu", f"omni_npu_quant.npu_sim emulation of torch_npu ({prof.device_name})")
    mod.__omni_npu_sim__ = True
    mod.__version__ = "0+omni_npu_quant.npu_sim"
    mod.profile = prof
    mod.ops = ops
    for name in _OPS:
        setattr(mod, name, getattr(ops, name))
    for name, val in (("hifloat8", NPU_HIFLOAT8), ("float8_e5m2", NPU_FLOAT8_E5M2), ("float8_e4m3fn", NPU_FLOAT8_E4M3FN),
                      ("float8_e8m0fnu", NPU_FLOAT8_E8M0FNU), ("float4_e2m1fn_x2", NPU_FLOAT4_E2M1FN_X2),
                      ("float4_e1m2fn_x2", NPU_FLOAT4_E1M2FN_X2)):
        setattr(mod, name, val)
    npu = types.ModuleType("torch_npu.npu")
    npu.is_available = lambda: True
    npu.device_count = lambda: 1
    npu.current_device = lambda: 0
    npu.set_device = lambda *a, **k: None
    npu.synchronize = lambda *a, **k: None
    npu.get_soc_version = lambda: prof.soc_version
    npu.get_device_name = lambda device=None: prof.device_name
    npu.config = types.SimpleNamespace(allow_internal_format=True)
    mod.npu = npu
    _MODULES[prof.name] = mod
    return mod


_MISSING = object()


@contextlib.contextmanager
def install(soc: str = "A2"):
    """Install the emulator as ``torch_npu`` (and ``torch.npu``) inside the ``with`` block."""
    mod = make_module(soc)
    prev_mod = sys.modules.get("torch_npu", _MISSING)
    prev_sub = sys.modules.get("torch_npu.npu", _MISSING)
    prev_attr = getattr(torch, "npu", _MISSING)
    sys.modules["torch_npu"] = mod
    sys.modules["torch_npu.npu"] = mod.npu
    torch.npu = mod.npu
    try:
        yield mod
    finally:
        for key, prev in (("torch_npu", prev_mod), ("torch_npu.npu", prev_sub)):
            if prev is _MISSING:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = prev
        if prev_attr is _MISSING:
            if hasattr(torch, "npu"):
                delattr(torch, "npu")
        else:
            torch.npu = prev_attr


def install_from_env() -> types.ModuleType | None:
    """Install for the whole process when ``OMNI_NPU_QUANT_NPU_SIM`` names a SoC; return the module."""
    soc = os.environ.get(ENV, "").strip()
    if not soc:
        return None
    if soc.upper() not in PROFILES:
        raise ValueError(f"{ENV}={soc!r}: choose one of {sorted(PROFILES)}")
    existing = sys.modules.get("torch_npu")
    if existing is not None and not getattr(existing, "__omni_npu_sim__", False):
        raise RuntimeError(f"{ENV} is set but a real torch_npu is already imported")
    mod = make_module(soc)
    sys.modules["torch_npu"] = mod
    sys.modules["torch_npu.npu"] = mod.npu
    torch.npu = mod.npu
    return mod
