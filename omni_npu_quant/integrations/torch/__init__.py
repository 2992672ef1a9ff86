"""Standalone PyTorch runtime: quantize any ``nn.Module`` online or apply a quantized checkpoint.

>>> from omni_npu_quant.integrations.torch import QuantConfig, quantize_
>>> quantize_(model, QuantConfig(scheme="mxfp4", ignored_layers=["lm_head"]))

``nn.Linear`` layers become ``QuantLinear`` modules running on the backend that the platform
dispatcher (``omni_npu_quant.backends.registry.select_backend``) picks, or the one named.
"""
from .api import (LayerPlan, collect_act_ranges, format_plan, linear_names, load_quantized, plan_quantization,
                  quantize_, quantized_tensor_sets)
from .config import CONFIG_VERSION, QuantConfig
from .module import QuantLinear, resolve_backend

__all__ = ["QuantConfig", "CONFIG_VERSION", "QuantLinear", "quantize_", "load_quantized", "plan_quantization",
           "format_plan", "LayerPlan", "linear_names", "collect_act_ranges", "quantized_tensor_sets", "resolve_backend"]
