"""Small checkpoints written by our own quantizer + writer from a seeded transformers Llama (tests/interop and
tests/checkpoint/test_fold.py)."""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_llama(dtype, seed: int = 0, hidden: int = 128, inter: int = 256, layers: int = 1, bias: bool = True):
    """A seeded transformers Llama at small width (attention biases on, so the bias path is exercised)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attention_bias=bias, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():  # non-trivial norm weights and biases (fresh ones are all 1 / 0)
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def calib_ids(seed: int = 1, batch: int = 2, seq: int = 16):
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def write_ours(model, out: Path, scheme: str) -> Path:
    """What ``omni-npu-quant quantize --model DIR`` does (the model saved as a transformers directory, quantize_,
    then the AscendV1 writer copying that directory's config.json, which carries the model dtype), with
    calibration data for ``w8a8_static``; lm_head stays float."""
    from omni_npu_quant.checkpoint import write_ascendv1
    from omni_npu_quant.integrations.torch import QuantConfig, quantize_, quantized_tensor_sets
    from omni_npu_quant.integrations.torch.module import quantized_state_keys

    src = out.parent / (out.name + "-float")
    model.save_pretrained(src)
    with torch.no_grad():
        quantize_(model, QuantConfig(scheme=scheme, ignored_layers=["lm_head"]), calib_data=calib_ids())
    layers = quantized_tensor_sets(model)
    qkeys = quantized_state_keys(model)
    floats = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in qkeys}
    return write_ascendv1(out, layers, floats, copy_from=str(src))
