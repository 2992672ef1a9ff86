"""Ascend NPU kernels: documented torch_npu op sequences (npu_ops.md sections 3-4).  ``torch_npu``
is resolved lazily through ``omni_npu_quant.platform.torch_npu_ops`` (the real package or the CPU
emulator of the target SoC), never at import."""
