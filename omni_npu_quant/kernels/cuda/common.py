"""What the CUDA kernels share: device support (family, Triton present), the verified labels, and
the ``torch.library`` custom op that ``torch.compile`` sees instead of the Triton launches.

``CudaKernel.apply`` runs the kernel's ``_apply`` directly in eager mode (no dispatcher cost).  While
Dynamo traces (``torch.compiler.is_compiling()``) it emits ``omni_npu_quant::cuda_linear(x2, handle,
add_bias)`` instead: an opaque custom op whose fake implementation gives the (M, N) output in the
activation dtype, so compiled graphs (and their CUDA graphs) call the same launchers."""
from __future__ import annotations

import abc
import functools
import importlib
import itertools
import os
import weakref

import torch

from ..base import LinearKernel

_HANDLES: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_NEXT = itertools.count(1)


def _register(p):
    """Give a prepared layer the integer handle the custom op names it by (set once, at prepare)."""
    h = next(_NEXT)
    _HANDLES[h] = p
    p._op_handle = h
    return p


@torch.library.custom_op("omni_npu_quant::cuda_linear", mutates_args=())
def cuda_linear(x2: torch.Tensor, handle: int, add_bias: bool) -> torch.Tensor:
    """(M, K) activation -> (M, N) through the prepared layer registered under ``handle``."""
    p = _HANDLES[handle]
    out = p.kernel._apply(p, x2, add_bias)
    if out.dtype != p.kernel.output_dtype(p):  # compiled graphs only: the fake promised output_dtype
        raise RuntimeError(f"{p.kernel.name}: returned {out.dtype}, its output_dtype() says "
                           f"{p.kernel.output_dtype(p)} (the torch.compile fake would misread the output)")
    return out


@cuda_linear.register_fake
def _cuda_linear_fake(x2, handle, add_bias):
    p = _HANDLES[handle]
    return x2.new_empty((x2.shape[0], p.n), dtype=p.kernel.output_dtype(p))

SM90_VERIFIED = ("tested on an H200 (SM90): tests/backends/cuda -m gpu, quantizer bytes and outputs vs the reference, "
                 "2026-11-21")
CUDA_DOC = "documented only (cuda_mirror.md section 4; CUDA backend tests decide)"
UNTESTED = ("untested on a GPU: CPU tests only (call contract against a fake of the compiled op, refusal reasons); "
            "exactness stated from the library's source")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True


def ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


_JIT_MODULES: dict[str, object] = {}
GEMV_ENV = "OMNI_NPU_QUANT_CUDA_GEMV"  # jit/gemv.py's switch (read once per layer, at prepare)


def jit_module(name: str):
    """``kernels.cuda.jit.<name>`` (Triton kernels), imported at the first call and cached: the CUDA kernels'
    ``apply`` paths call this instead of importing per call (and instead of importing Triton at module import)."""
    m = _JIT_MODULES.get(name)
    if m is None:
        m = _JIT_MODULES[name] = importlib.import_module(f"{__package__}.jit.{name}")
    return m


def gemv_requested(kernel) -> bool:
    """The opt-in small-M ``jit/gemv.py`` path for a layer being prepared on ``kernel``: backend option ``gemv``
    over ``OMNI_NPU_QUANT_CUDA_GEMV``; with neither set, False without importing Triton."""
    opt = kernel.target.options.get("gemv")
    if opt is None and os.environ.get(GEMV_ENV, "0") in ("", "0"):
        return False
    return jit_module("gemv").enabled(opt)


class CudaKernel(LinearKernel):
    device_kind = "cuda"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # every CUDA prepare registers its PreparedLinear for the custom op: the class's own prepare, or one it
        # inherits from a mixin that is not a CudaKernel (cuda.svd takes SVDKernel.prepare; 2026-12-02 H200:
        # torch.compile of cuda.svd failed with no _op_handle)
        own = getattr(cls, "prepare", None)
        if own is not None and not getattr(own, "_registers_handle", False):
            @functools.wraps(own)
            def prepare(self, *a, **k):
                return _register(own(self, *a, **k))

            prepare._registers_handle = True
            cls.prepare = prepare
    families: tuple[str, ...] = ("sm80", "sm89", "sm90", "sm100", "sm120")

    @classmethod
    def is_supported(cls, device):
        if device.family is None:
            return False, device.detail or "no CUDA device (or a GPU older than SM80)"
        if device.family not in cls.families:
            return False, cls.family_refusal(device.family)
        if device.probed and not triton_available():
            return False, "triton is not importable (pip install triton)"
        return True, ""

    @classmethod
    def family_refusal(cls, family: str) -> str:
        return f"{cls.name} runs on {'/'.join(cls.families)}, not {family}"

    def output_dtype(self, p) -> torch.dtype:
        """The dtype ``_apply`` returns (the custom op's fake must say the same: a wrong one reinterprets the
        output's bytes in compiled graphs): the activation dtype unless a kernel says otherwise."""
        return p.act_dtype

    def apply(self, p, x2, add_bias=True):
        if torch.compiler.is_compiling():
            return torch.ops.omni_npu_quant.cuda_linear(x2, p._op_handle, add_bias)
        return self._apply(p, x2, add_bias)

    @abc.abstractmethod
    def _apply(self, p, x2, add_bias=True):
        """The launches (each CUDA kernel implements it; ``apply`` routes torch.compile through the custom op)."""

    def verified_for(self, device) -> str:
        return SM90_VERIFIED if device.family == "sm90" else CUDA_DOC

    @property
    def verified(self) -> str:  # type: ignore[override]
        return self.verified_for(self.target.device)

    @property
    def torch_device(self):
        return torch.device(self.dev)
