"""The exact PyTorch reference kernels: run on any torch device (native on the CPU, the exact
fallback elsewhere).  Weights stay in their stored (quantized) form; each call decodes them in
bounded row chunks, so no full-precision copy of a weight is ever kept."""
