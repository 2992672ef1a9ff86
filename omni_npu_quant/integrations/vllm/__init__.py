"""vLLM plugin: quantization methods ``omni_npu_quant`` (checkpoint-driven) and ``omni_npu_<scheme>``
(online).  Importing this package does not import vLLM; ``plugin.register()`` does (it is the
``vllm.general_plugins`` entry point)."""
