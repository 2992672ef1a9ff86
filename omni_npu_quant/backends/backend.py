"""``Backend``: one device target and its kernel candidates (the only backend class).

``ReferenceBackend()``, ``NpuBackend(soc, sim)`` and ``CudaBackend(device)`` are constructors of
it for the three device kinds.  Selection per layer: the kernels of the target's device kind in
registry order; the first whose ``is_supported(device)`` and ``can_implement(scheme, n, k,
act_dtype)`` accept runs the layer.  Refusals are kept (``Capability.refusals``) and logged.
"""
from __future__ import annotations

import logging
import os

import torch

from .. import platform as P
from ..kernels.base import FALLBACK, UNSUPPORTED, KernelPrepareError, KernelRefusal, LinearKernel, PreparedLinear, Target
from ..kernels.registry import candidate_classes, kernel_class
from ..schemes.base import Scheme
from .base import Capability, LinearBackend

__all__ = ["Backend", "ReferenceBackend", "NpuBackend", "CudaBackend", "NpuPrepareError"]

log = logging.getLogger("omni_npu_quant.backends")
_LOGGED: set = set()

NpuPrepareError = KernelPrepareError  # the name NPU callers know


def _log_once(key, msg, *args):
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(msg, *args)


class Backend(LinearBackend):
    """A device target with ordered kernel candidates.  ``kernel=`` pins one kernel by name."""

    def __init__(self, name: str, device: P.DeviceInfo | None, torch_device: str = "cpu", *,
                 kernel: str | None = None, **options):
        self.name = name
        self._device = device
        self._torch_device = torch_device
        self.pinned = kernel
        self.options = options
        self._kernels: list[LinearKernel] | None = None
        # per-call fast path of apply (input already on the device, in the dtype, contiguous): the CPU or a CUDA
        # device with an index compare devices; plain "cuda" compares with the current device; others: general path
        td = str(torch_device)
        self._fixed_dev = torch.device(td) if td == "cpu" or td.startswith("cuda:") else None
        self._plain_cuda = td == "cuda"

    # ---- target -----------------------------------------------------------------------
    @property
    def device_info(self) -> P.DeviceInfo:
        if self._device is None:  # real NPU: detected on first use
            dev = P.detect_device()
            self._device = dev if dev.kind == "npu" else P.DeviceInfo("npu", None, "npu", probed=True,
                                                                    detail="no Ascend NPU detected")
        return self._device

    @property
    def device(self) -> str:
        """The torch device the prepared tensors live on."""
        return self._torch_device

    @property
    def target(self) -> Target:
        return Target(self.device_info, self._torch_device, self.options)

    def kernels(self) -> list[LinearKernel]:
        if self._kernels is None:
            classes = [kernel_class(self.pinned)] if self.pinned else candidate_classes(self.device_info.kind)
            self._kernels = [c(self.target) for c in classes]
        return self._kernels

    # ---- selection --------------------------------------------------------------------
    def select(self, scheme: Scheme, n: int | None = None, k: int | None = None,
               act_dtype: torch.dtype | None = None) -> tuple[LinearKernel | None, list[tuple[str, str]]]:
        refusals: list[tuple[str, str]] = []
        dev = self.device_info
        for kern in self.kernels():
            ok, why = kern.is_supported(dev)
            if ok:
                ok, why = kern.can_implement(scheme, n, k, act_dtype)
            if ok:
                return kern, refusals
            if scheme.name in kern.schemes:  # only refusals of kernels that implement the scheme are news
                refusals.append((kern.name, why))
        return None, refusals

    def capability(self, scheme: Scheme) -> Capability:
        kern, refusals = self.select(scheme)
        if kern is None:
            why = "; ".join(f"{k}: {w}" for k, w in refusals) or f"no kernel implements {scheme.name} on " \
                                                                 f"{self.device_info.label}"
            return Capability(UNSUPPORTED, why, refusals=tuple(refusals))
        mode, why = kern.mode(scheme)
        if mode == FALLBACK and refusals:
            why += " [refused: " + "; ".join(f"{k}: {w}" for k, w in refusals) + "]"
        return Capability(mode, why, kern.name, tuple(refusals), kern.verified)

    # ---- compute ----------------------------------------------------------------------
    def prepare(self, scheme: Scheme, tensors: dict[str, torch.Tensor], act_dtype: torch.dtype, *,
                k: int | None = None, where: str = "") -> PreparedLinear:
        loc = where or scheme.name
        cap = self.capability(scheme)
        if not cap.ok:
            raise KernelPrepareError(f"{loc}: backend '{self.name}' cannot run scheme {scheme.name}: {cap.reason}")
        n, k = scheme.validate(tensors, k=k, where=where)
        refusals: list[tuple[str, str]] = []
        p = None
        for kern in self.kernels():
            ok, why = kern.is_supported(self.device_info)
            if ok:
                ok, why = kern.can_implement(scheme, n, k, act_dtype)
            if ok:
                try:
                    p = kern.prepare(scheme, tensors, act_dtype, n, k, loc)
                    break
                except KernelRefusal as e:
                    ok, why = False, str(e)
            if scheme.name in kern.schemes:
                refusals.append((kern.name, why))
        if p is None:
            why = "; ".join(f"{kn}: {w}" for kn, w in refusals) or "no kernel implements it here"
            raise KernelPrepareError(f"{loc}: backend '{self.name}' cannot run scheme {scheme.name} for this layer "
                                     f"(N={n}, K={k}, {str(act_dtype).replace('torch.', '')}): {why}")
        p.backend = self.name
        p.refusals = refusals
        if refusals:
            log.info("%s: kernels refused before %s: %s", loc, kern.name, "; ".join(f"{a}: {b}" for a, b in refusals))
        if p.mode == FALLBACK:
            _log_once((self.name, scheme.name, kern.name), "backend %s: scheme %s runs as an exact fallback (%s): %s",
                      self.name, scheme.name, kern.name, kern.mode(scheme)[1])
        for note in p.notes:
            _log_once((self.name, scheme.name, note), "%s: %s", loc, note)
        return p

    def _as_2d(self, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != p.k:
            raise ValueError(f"input has {x.shape[-1]} features, layer expects K={p.k}")
        return x.reshape(-1, p.k).to(self._torch_device, p.act_dtype).contiguous()

    def quantize_activation(self, p: PreparedLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lead = x.shape[:-1]
        out = p.kernel.quantize_activation(p, self._as_2d(p, x))
        return {name: t.reshape(*lead, *t.shape[1:]) for name, t in out.items()}

    def apply(self, p: PreparedLinear, x: torch.Tensor, *, add_bias: bool = True) -> torch.Tensor:
        lead = x.shape[:-1]
        k = p.k
        if x.shape[-1] != k:
            raise ValueError(f"input has {x.shape[-1]} features, layer expects K={k}")
        # fast path (no .to() / device parsing per call): already in the layer's dtype, on its device, contiguous
        if x.dtype == p.act_dtype and x.is_contiguous() and self._on_device(x):
            x2 = x.view(-1, k)
        else:
            x2 = x.reshape(-1, k).to(self._torch_device, p.act_dtype).contiguous()
        if x2.shape[0] == 0:  # an empty batch needs no kernel (some device ops refuse M = 0)
            return torch.empty(*lead, p.n, dtype=x.dtype, device=x2.device)
        out = p.kernel.apply(p, x2, add_bias)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out.view(*lead, p.n) if out.is_contiguous() else out.reshape(*lead, p.n)

    def _on_device(self, x: torch.Tensor) -> bool:
        d = self._fixed_dev
        if d is not None:
            return x.device == d
        if not self._plain_cuda or not x.is_cuda or torch.compiler.is_compiling():  # e.g. "npu": the general path
            return False
        return x.get_device() == torch.cuda.current_device()

    def __repr__(self) -> str:
        return f"<backend {self.name} ({self.device_info.label})>"


class ReferenceBackend(Backend):
    """The exact PyTorch reference on the CPU."""

    name = "reference"

    def __init__(self, **options):
        super().__init__(self.name, P.DeviceInfo("cpu", "cpu", "cpu"), "cpu", **options)


class NpuBackend(Backend):
    """The Ascend NPU: the real one (``soc`` detected or named) or the CPU emulator of one SoC."""

    def __init__(self, soc: str | None = None, sim: bool = False, *, act_fake_quant: bool = False, **options):
        if sim and not soc:
            raise ValueError("the emulated NPU backend needs a SoC: NpuBackend(soc='A2', sim=True)")
        if sim:
            fam = soc.upper()
            if fam not in ("A2", "A3", "A5"):
                raise ValueError(f"unknown emulated SoC {soc!r}: use A2, A3 or A5")
            super().__init__(f"npu-sim:{fam}", P.DeviceInfo("npu", fam, f"npu-sim {fam}", simulated=True), "cpu",
                             act_fake_quant=act_fake_quant, **options)
        else:
            dev = P.DeviceInfo("npu", soc.upper(), soc.upper()) if soc else None
            super().__init__("npu", dev, "npu", act_fake_quant=act_fake_quant, **options)


class CudaBackend(Backend):
    """An NVIDIA GPU (``device`` defaults to ``cuda``; ``cpu`` runs the Triton kernels in Triton's
    interpreter when ``TRITON_INTERPRET=1``, for CPU tests)."""

    def __init__(self, device: str | torch.device | None = None, **options):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            info = P.detect_device() if torch.cuda.is_available() else None
            if info is None or info.kind != "cuda":
                info = P.DeviceInfo("cuda", None, "cuda", probed=True, detail="no CUDA device")
        elif os.environ.get("TRITON_INTERPRET") == "1":
            info = P.DeviceInfo("cuda", "sm90", "triton-interpreter", probed=True, interpreted=True,
                                detail="Triton interpreter on the CPU (TRITON_INTERPRET=1); behaves as SM90")
        else:
            info = P.DeviceInfo("cuda", None, str(dev), probed=True,
                                detail=f"no CUDA device (torch device {dev}; set TRITON_INTERPRET=1 to run the Triton "
                                       f"kernels in the interpreter)")
        super().__init__("cuda", info, str(dev), **options)
