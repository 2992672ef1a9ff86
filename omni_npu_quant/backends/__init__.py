"""Backends: the device targets users name (reference, npu, npu-sim:A2|A3|A5, cuda), each with
ordered kernel candidates from ``omni_npu_quant.kernels``."""
from .backend import Backend, CudaBackend, NpuBackend, NpuPrepareError, ReferenceBackend
from .base import FALLBACK, NATIVE, UNSUPPORTED, Capability, LinearBackend, PreparedLinear

__all__ = ["Backend", "CudaBackend", "NpuBackend", "NpuPrepareError", "ReferenceBackend", "Capability",
           "LinearBackend", "PreparedLinear", "NATIVE", "FALLBACK", "UNSUPPORTED"]
