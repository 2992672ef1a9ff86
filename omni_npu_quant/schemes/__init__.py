"""Quantization schemes: stored tensors, validation, shape rules, weight quantization (no kernels).

One module per scheme, each registering itself (``registry.register_scheme``).  Names re-exported
here are loaded lazily so that importing one scheme does not import the rest.
"""
from .base import ACT_DTYPES, Scheme, SchemeValidationError, TensorSpec, apply_mul_scale, effective_mul_scale
from .registry import LABEL_TO_SCHEME, SCHEMES, get_scheme, register_scheme, scheme_names

_LAZY = {
    "W8A8Dynamic": "w8a8_dynamic", "W8A8Static": "w8a8_static", "W8A16": "w8a16", "MXFP8": "mxfp8",
    "MXFP4": "mxfp4", "W4A8MXFP": "w4a8_mxfp", "MXFP4Dual": "mxfp4_dual", "MXScheme": "mx_base",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in ("MAIN_SCHEMES", "ONLINE_SCHEMES"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ACT_DTYPES", "Scheme", "SchemeValidationError", "TensorSpec", "apply_mul_scale", "effective_mul_scale",
           "LABEL_TO_SCHEME", "SCHEMES", "MAIN_SCHEMES", "ONLINE_SCHEMES", "get_scheme", "register_scheme",
           "scheme_names", *_LAZY]
