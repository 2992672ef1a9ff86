"""Build the emulated ``torch_npu`` package (one per SoC): the op table, dtype handles, and the
submodules and names third-party code imports when it sees ``torch_npu``.

Names and signatures follow torch-npu wheel 2.14.0 (paths inside the wheel):

* ``torch_npu/npu/__init__.py``: ``is_available``, ``device_count``, ``get_device_name``, ``mem_get_info``;
  ``torch_npu/npu/utils.py``: ``synchronize``, ``set_device``, ``current_device``, ``is_bf16_supported``;
  ``torch_npu/npu/memory.py``: ``empty_cache`` and the allocator statistics; ``torch_npu/npu/random.py``: the RNG
  functions; ``torch_npu/npu/_backends.py``: ``get_soc_version``; ``torch_npu/npu/_format.py``: ``Format`` (an
  ``IntEnum``; ``torch_npu.get_npu_format`` returns one).
* What transformers 5.20 and accelerate 1.15 import or call once ``torch_npu`` is importable (grep of their sources):
  ``from torch_npu import npu_fusion_attention``, ``from torch_npu.optim import NpuFusedAdamW``, ``import torch_npu``
  (accelerate ``state.py``, ``accelerator.py``, ``utils/modeling.py``), and ``torch.npu.{is_available, device_count,
  current_device, set_device, get_device_name, is_bf16_supported, manual_seed, manual_seed_all, get_rng_state,
  set_rng_state, random.get_rng_state(_all), empty_cache, mem_get_info, memory_allocated, max_memory_allocated,
  reset_peak_memory_stats, reset_max_memory_allocated, amp.GradScaler}``.

The emulated device *is* the CPU: ``Tensor.npu()`` returns a CPU tensor, the RNG functions act on the CPU default
generator, ``mem_get_info`` reports host memory.  Names whose semantics need a real device (fused attention, fused
optimizers, allocator statistics, AMP grad scaling) exist, so imports work, but raise ``NpuSimNotEmulated`` -- a
``NotImplementedError`` naming them -- when called.
"""
from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import os
import types

import torch

from ..numerics.constants import (NPU_FLOAT4_E1M2FN_X2, NPU_FLOAT4_E2M1FN_X2, NPU_FLOAT8_E4M3FN, NPU_FLOAT8_E5M2,
                                  NPU_FLOAT8_E8M0FNU, NPU_HIFLOAT8)
from .ops import NpuSimError, NpuSimOps
from .profiles import SocProfile

__all__ = ["NpuSimNotEmulated", "Format", "build_package", "SUBMODULES", "OPS"]

OPS = ("npu_dynamic_quant", "npu_quantize", "npu_trans_quant_param", "npu_quant_matmul", "npu_dynamic_mx_quant",
       "npu_dynamic_dual_level_mx_quant", "npu_dual_level_quant_matmul", "npu_weight_quant_batchmatmul",
       "npu_convert_weight_to_int4pack", "npu_format_cast", "npu_format_cast_", "get_npu_format", "npu_dtype_cast")
# every module the emulator registers in sys.modules while installed (parents first)
SUBMODULES = ("torch_npu", "torch_npu.npu", "torch_npu.npu.amp", "torch_npu.npu.random", "torch_npu.optim")
_PACKAGES = {"torch_npu", "torch_npu.npu", "torch_npu.npu.amp", "torch_npu.optim"}


class NpuSimNotEmulated(NotImplementedError):
    """A torch_npu name that exists in the emulator so imports work, but whose behaviour is not emulated."""


class Format(enum.IntEnum):
    """NPU storage formats (torch-npu wheel 2.14.0: ``torch_npu/npu/_format.py``)."""
    UNDEFINED = -1
    NCHW = 0
    NHWC = 1
    ND = 2
    NC1HWC0 = 3
    FRACTAL_Z = 4
    NC1HWC0_C04 = 12
    HWCN = 16
    NDHWC = 27
    FRACTAL_NZ = 29
    NCDHW = 30
    NDC1HWC0 = 32
    FRACTAL_Z_3D = 33
    NC = 35
    NCL = 47
    FRACTAL_NZ_C0_16 = 50
    FRACTAL_NZ_C0_32 = 51
    FRACTAL_NZ_C0_2 = 52
    FRACTAL_NZ_C0_4 = 53
    FRACTAL_NZ_C0_8 = 54

    def __str__(self):
        return self.name


class _SimLoader(importlib.abc.Loader):
    """Loader of the emulated modules: they are built in memory, never from a file."""

    def __init__(self, modules: dict[str, types.ModuleType]):
        self._modules = modules

    def create_module(self, spec):
        return self._modules.get(spec.name)

    def exec_module(self, module):  # already populated by build_package
        return None


def _not_emulated(qualname: str):
    def stub(*args, **kwargs):
        raise NpuSimNotEmulated(f"not emulated: {qualname} (omni_npu_quant.npu_sim emulates the torch_npu quantization "
                                f"ops and device queries only; run this on a real Ascend NPU)")

    stub.__name__ = stub.__qualname__ = qualname.rsplit(".", 1)[-1]
    stub.__doc__ = f"Placeholder: calling it raises NpuSimNotEmulated ({qualname} is not emulated)."
    return stub


def _device_index(device, what: str) -> int:
    """None / 0 / 'npu' / 'npu:0' / torch.device('cpu') -> 0; anything else is refused (the emulator has one device)."""
    if device is None:
        return 0
    if isinstance(device, torch.device):
        if device.type == "cpu":
            return 0
        device = str(device)
    if isinstance(device, str):
        s = device.strip().lower()
        if s in ("npu", "cpu"):
            return 0
        if s.startswith("npu:") and s[4:].isdigit():
            device = int(s[4:])
        else:
            raise NpuSimError(f"{what}: unknown device {device!r}; the emulated NPU is 'npu' / 'npu:0'")
    if isinstance(device, int) and not isinstance(device, bool):
        if device != 0:
            raise NpuSimError(f"{what}: invalid device index {device}: the emulator has exactly one NPU (index 0)")
        return 0
    raise NpuSimError(f"{what}: expected a device index, 'npu[:0]' or torch.device, got {type(device).__name__}")


def _host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory: the emulated device's memory."""
    total = avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        total = int(info["MemTotal"].split()[0]) * 1024
        avail = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        avail = os.sysconf("SC_AVPHYS_PAGES") * page
    return avail, total


def _build_npu(prof: SocProfile) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    npu = types.ModuleType("torch_npu.npu", f"omni_npu_quant.npu_sim emulation of torch_npu.npu ({prof.device_name})")
    npu.is_available = lambda: True
    npu.device_count = lambda: 1
    npu.current_device = lambda: 0
    npu.set_device = lambda device: (_device_index(device, "torch.npu.set_device"), None)[1]
    npu.synchronize = lambda device=None: (_device_index(device, "torch.npu.synchronize"), None)[1]
    npu.get_soc_version = lambda: prof.soc_version
    npu.get_device_name = lambda device_name=None: (_device_index(device_name, "torch.npu.get_device_name"),
                                                    prof.device_name)[1]
    npu.is_bf16_supported = lambda including_emulation=False: True  # A2/A3/A5 all have bf16 cube units
    npu.is_initialized = lambda: True
    npu.init = lambda: None

    def mem_get_info(device=None):
        """(free, total) bytes; the emulated NPU's memory is host memory."""
        _device_index(device, "torch.npu.mem_get_info")
        return _host_memory()

    npu.mem_get_info = mem_get_info
    npu.empty_cache = lambda: None  # nothing is cached: tensors live in host memory
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved",
                 "reset_peak_memory_stats", "reset_max_memory_allocated", "reset_accumulated_memory_stats",
                 "memory_stats", "memory_summary", "get_device_properties", "get_device_capability", "Stream", "Event",
                 "current_stream", "stream", "set_per_process_memory_fraction"):
        setattr(npu, name, _not_emulated(f"torch_npu.npu.{name}"))

    rnd = types.ModuleType("torch_npu.npu.random", "RNG of the emulated NPU: the CPU default generator")

    def get_rng_state(device="npu"):
        _device_index(device, "torch.npu.get_rng_state")
        return torch.get_rng_state()

    def set_rng_state(new_state, device="npu"):
        _device_index(device, "torch.npu.set_rng_state")
        torch.set_rng_state(new_state)

    def set_rng_state_all(new_states):
        states = list(new_states)
        if len(states) != 1:
            raise NpuSimError(f"torch.npu.set_rng_state_all: got {len(states)} states, the emulator has one NPU")
        torch.set_rng_state(states[0])

    rnd.get_rng_state = get_rng_state
    rnd.set_rng_state = set_rng_state
    rnd.get_rng_state_all = lambda: [torch.get_rng_state()]
    rnd.set_rng_state_all = set_rng_state_all
    rnd.manual_seed = lambda seed: (torch.manual_seed(int(seed)), None)[1]
    rnd.manual_seed_all = rnd.manual_seed
    rnd.seed = lambda: (torch.seed(), None)[1]
    rnd.seed_all = rnd.seed
    rnd.initial_seed = torch.initial_seed
    for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all", "manual_seed",
                 "manual_seed_all", "seed", "seed_all", "initial_seed"):
        setattr(npu, name, getattr(rnd, name))
    npu.random = rnd

    amp = types.ModuleType("torch_npu.npu.amp", "AMP of the emulated NPU (not emulated)")
    amp.GradScaler = _not_emulated("torch_npu.npu.amp.GradScaler")
    amp.autocast = _not_emulated("torch_npu.npu.amp.autocast")
    npu.amp = amp
    npu.config = types.SimpleNamespace(allow_internal_format=True)
    return npu, rnd, amp


def build_package(prof: SocProfile) -> dict[str, types.ModuleType]:
    """The emulated ``torch_npu`` package of one SoC: {module name: module}, each with a ModuleSpec."""
    ops = NpuSimOps(prof)
    mod = types.ModuleType("torch_npu", f"omni_npu_quant.npu_sim emulation of torch_npu ({prof.device_name})")
    mod.__omni_npu_sim__ = True
    mod.__version__ = "0+omni_npu_quant.npu_sim"
    mod.profile = prof
    mod.ops = ops
    for name in OPS:
        setattr(mod, name, getattr(ops, name))
    mod.Format = Format
    for name, val in (("hifloat8", NPU_HIFLOAT8), ("float8_e5m2", NPU_FLOAT8_E5M2), ("float8_e4m3fn", NPU_FLOAT8_E4M3FN),
                      ("float8_e8m0fnu", NPU_FLOAT8_E8M0FNU), ("float4_e2m1fn_x2", NPU_FLOAT4_E2M1FN_X2),
                      ("float4_e1m2fn_x2", NPU_FLOAT4_E1M2FN_X2)):
        setattr(mod, name, val)
    mod.npu_fusion_attention = _not_emulated("torch_npu.npu_fusion_attention")
    npu, rnd, amp = _build_npu(prof)
    mod.npu = npu
    optim = types.ModuleType("torch_npu.optim", "fused optimizers of torch_npu (not emulated)")
    for name in ("NpuFusedAdamW", "NpuFusedAdam", "NpuFusedSGD"):
        setattr(optim, name, _not_emulated(f"torch_npu.optim.{name}"))
    mod.optim = optim
    modules = {"torch_npu": mod, "torch_npu.npu": npu, "torch_npu.npu.amp": amp, "torch_npu.npu.random": rnd,
               "torch_npu.optim": optim}
    assert tuple(modules) == SUBMODULES
    loader = _SimLoader(modules)
    for name, m in modules.items():
        is_pkg = name in _PACKAGES
        spec = importlib.machinery.ModuleSpec(name, loader, origin="omni_npu_quant.npu_sim", is_package=is_pkg)
        if is_pkg:
            spec.submodule_search_locations = []
            m.__path__ = []
        m.__spec__ = spec
        m.__loader__ = loader
        m.__package__ = name if is_pkg else name.rpartition(".")[0]
    return modules
