"""CUDA kernels: the NPU semantics of every scheme on NVIDIA GPUs (SM90 first) through Triton.

Importing this package needs neither a GPU nor Triton; the Triton code lives in ``jit/`` and is
imported when a kernel first runs.  See docs/cuda.md."""
