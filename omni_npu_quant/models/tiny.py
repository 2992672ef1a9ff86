"""Tiny seeded models whose linear layers carry HF / diffusers-style names.

* ``TinyLlama``: ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``model.layers.{i}.mlp.{gate,up,down}_proj``
  (hidden 512, intermediate 1024, so every K is a multiple of 512 and dual-scale applies).
* ``TinyDiT``: ``blocks.{i}.attn.{to_q,to_k,to_v,to_out}``, ``blocks.{i}.ff.{proj_in,proj_out}``
  on image-like token sequences.

Activations carry a few outlier channels, like real models, so smoothing has something to do.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class _Attn(nn.Module):
    def __init__(self, d: int, heads: int, names=("q_proj", "k_proj", "v_proj", "o_proj")):
        super().__init__()
        self.heads = heads
        self.names = names
        for nm in names:
            setattr(self, nm, nn.Linear(d, d, bias=False))

    def forward(self, x):
        q, k, v = (getattr(self, n)(x) for n in self.names[:3])
        b, t, d = x.shape
        h = self.heads
        q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.names[0] == "q_proj")
        return getattr(self, self.names[3])(o.transpose(1, 2).reshape(b, t, d))


class _LlamaMLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _LlamaLayer(nn.Module):
    def __init__(self, d, f, heads):
        super().__init__()
        self.input_layernorm = RMSNorm(d)
        self.self_attn = _Attn(d, heads)
        self.post_attention_layernorm = RMSNorm(d)
        self.mlp = _LlamaMLP(d, f)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _Inner(nn.Module):
    def __init__(self, vocab, d, f, heads, layers):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_LlamaLayer(d, f, heads) for _ in range(layers))
        self.norm = RMSNorm(d)


class TinyLlama(nn.Module):
    def __init__(self, vocab=256, hidden=512, intermediate=1024, heads=8, layers=2):
        super().__init__()
        self.config = dict(model_type="tiny_llama", vocab_size=vocab, hidden_size=hidden,
                           intermediate_size=intermediate, num_attention_heads=heads, num_hidden_layers=layers)
        self.model = _Inner(vocab, hidden, intermediate, heads, layers)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids):
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


class _DiTBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = _Attn(d, heads, names=("to_q", "to_k", "to_v", "to_out"))
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Module()
        self.ff.proj_in = nn.Linear(d, 2 * d)
        self.ff.proj_out = nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ff.proj_out(F.gelu(self.ff.proj_in(self.norm2(x))))


class TinyDiT(nn.Module):
    """A stack of DiT-like blocks on (B, T, C) latent tokens (image-like: T = 8x8 patches)."""

    def __init__(self, hidden=512, heads=8, blocks=2, in_channels=16):
        super().__init__()
        self.config = dict(model_type="tiny_dit", hidden_size=hidden, num_blocks=blocks, in_channels=in_channels)
        self.proj_in = nn.Linear(in_channels, hidden)
        self.blocks = nn.ModuleList(_DiTBlock(hidden, heads) for _ in range(blocks))
        self.proj_out = nn.Linear(hidden, in_channels)

    def forward(self, latents):
        x = self.proj_in(latents)
        for b in self.blocks:
            x = b(x)
        return self.proj_out(x)


def _add_outliers(model: nn.Module, gen: torch.Generator) -> None:
    # a few large input channels in the norms feeding the linears: realistic activation outliers
    for mod in model.modules():
        if isinstance(mod, (RMSNorm, nn.LayerNorm)) and mod.weight is not None:
            d = mod.weight.numel()
            idx = torch.randperm(d, generator=gen)[: max(1, d // 64)]
            with torch.no_grad():
                mod.weight[idx] *= 20.0


def build_tiny(kind: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.bfloat16, **kw) -> nn.Module:
    """A seeded tiny model; ``kind`` is ``"llama"`` or ``"dit"``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = {"llama": TinyLlama, "dit": TinyDiT}[kind](**kw)
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=1.0 / math.sqrt(mod.in_features))
                if mod.bias is not None:
                    nn.init.normal_(mod.bias, std=0.02)
        _add_outliers(model, gen)
    return model.to(dtype).eval()


def tiny_inputs(kind: str = "llama", *, batch: int = 2, seq: int = 64, seed: int = 1, dtype=torch.bfloat16,
                model: nn.Module | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "llama":
        vocab = model.config["vocab_size"] if model is not None else 256
        return torch.randint(0, vocab, (batch, seq), generator=gen)
    ch = model.config["in_channels"] if model is not None else 16
    return torch.randn(batch, seq, ch, generator=gen).to(dtype)
