"""``vllm.general_plugins`` entry point: ``omni_npu_quant = omni_npu_quant.integrations.vllm.plugin:register``.

``register()`` is idempotent (vLLM loads general plugins in every process, sometimes more than once)
and declares no platform: on Ascend, vllm-ascend stays the platform plugin; on CUDA, vLLM's own.
"""
from __future__ import annotations

import logging

__all__ = ["register", "registered_methods"]

log = logging.getLogger("omni_npu_quant.vllm")

_REGISTERED: dict[str, type] = {}


def registered_methods() -> dict[str, type]:
    """{method name: config class} registered by this process so far."""
    return dict(_REGISTERED)


def register() -> None:
    """Register our quantization methods with vLLM (safe to call any number of times)."""
    if _REGISTERED:
        return
    try:
        from vllm.model_executor.layers.quantization import register_quantization_config
    except ImportError as e:  # pragma: no cover - only reachable without vLLM
        raise ImportError(f"omni_npu_quant's vLLM plugin needs vllm ({e})") from e
    from .config import CHECKPOINT_METHOD, OmniNpuQuantConfig, make_online_configs

    classes = {CHECKPOINT_METHOD: OmniNpuQuantConfig, **make_online_configs()}
    for name, cls in classes.items():
        register_quantization_config(name)(cls)
    _REGISTERED.update(classes)
    log.debug("omni_npu_quant: registered vLLM quantization methods %s", sorted(classes))
