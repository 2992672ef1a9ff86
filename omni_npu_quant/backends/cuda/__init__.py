"""CUDA mirror backend: the NPU semantics on NVIDIA GPUs through Triton kernels.

Importing this package needs neither a GPU nor Triton (Triton is imported when a kernel first
runs).  See docs/cuda.md.
"""
from .backend import CudaBackend, cuda_capability_family

__all__ = ["CudaBackend", "cuda_capability_family"]
