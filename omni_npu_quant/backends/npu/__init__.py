"""Ascend NPU backend (torch_npu imported lazily; ``NpuBackend(soc="A2", sim=True)`` runs on the CPU emulator)."""
from .backend import NpuBackend, NpuPrepareError

__all__ = ["NpuBackend", "NpuPrepareError"]
