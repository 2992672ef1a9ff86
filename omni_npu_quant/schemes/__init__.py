"""Quantization schemes: stored tensors, validation, weight quantization (no kernels here)."""
from .base import Scheme, SchemeValidationError, TensorSpec
from .int8 import W8A16, W8A8Dynamic, W8A8Static, effective_deq_scale, deq_scale_fp32, static_act_params
from .mx import MXFP4, MXFP8, MXFP4Dual, W4A8MXFP
from .registry import LABEL_TO_SCHEME, MAIN_SCHEMES, SCHEMES, get_scheme

__all__ = [n for n in dir() if not n.startswith("_")]
