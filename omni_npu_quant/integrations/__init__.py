"""Runtime integrations: the standalone torch runtime (``integrations.torch``) and the vLLM plugin
(``integrations.vllm``).  Both choose layers with the one grammar in ``integrations.selection``."""
