"""omni_npu_quant: Ascend-NPU-first quantization backends for vLLM and plain PyTorch.

One checkpoint (msModelSlim AscendV1 or ours), the same numbers on Atlas NPUs, NVIDIA GPUs and
the exact CPU reference.  Layers: ``numerics`` -> ``schemes`` -> ``backends`` -> ``integrations``
-> ``cli``.  The names below are imported lazily so ``import omni_npu_quant`` stays light.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "quantize_": "omni_npu_quant.integrations.torch",
    "load_quantized": "omni_npu_quant.integrations.torch",
    "QuantConfig": "omni_npu_quant.integrations.torch",
    "QuantLinear": "omni_npu_quant.integrations.torch",
    "load_checkpoint": "omni_npu_quant.checkpoint",
    "validate_checkpoint": "omni_npu_quant.checkpoint",
    "write_ascendv1": "omni_npu_quant.checkpoint",
    "get_scheme": "omni_npu_quant.schemes",
    "get_backend": "omni_npu_quant.backends.registry",
    "select_backend": "omni_npu_quant.backends.registry",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'omni_npu_quant' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
