"""Per-architecture layers kept float by default: one table, each entry with its reason.

``plan_quantization`` applies this table unless ``QuantConfig.apply_defaults`` is false.  Keys are
model class names (``type(model).__name__``, i.e. the diffusers ``_class_name`` / the transformers
``architectures`` entry); the ``"*"`` entry applies to every model.  Patterns use the one selection
grammar (``omni_npu_quant.integrations.selection``); a pattern that matches nothing in a model is
simply not used (the table describes families, not one checkpoint).  User choices win: an
``ignored_layers`` entry or an explicit ``layer_schemes`` entry overrides a default.

Why these layers (all architectures): the timestep / guidance / text embedders and the adaLN
modulation projections turn a few conditioning values into the scale / shift / gate of every
block, so an error there is applied to every token of every block; the final ``norm_out`` /
``proj_out`` (and Z-Image's ``all_final_layer``) write the predicted noise / velocity directly;
the patch embedders (``x_embedder``, ``img_in``) read raw latents with K = channels x patch (64),
below most schemes' block sizes.  Together they are a few percent of the weights of a 14B DiT.
vLLM-Omni keeps the Wan2.2 conditioning path unquantized by construction: in
vllm-project/vllm-omni ``vllm_omni/diffusion/models/wan2_2/wan2_2_transformer.py`` the condition
embedder is built from diffusers' ``TimestepEmbedding`` / ``PixArtAlphaTextProjection`` and a plain
``nn.Linear`` ``time_proj`` with no ``quant_config``, while the block projections (``to_qkv``,
``to_out``, the FFN) take the ``quant_config``.  Its per-model ``ignored_layers`` tables
(``docs/user_guide/diffusion/quantization/fp8.md``) then list only block layers: Qwen-Image skips
``img_mlp`` for FP8, Flux and Z-Image quantize every block layer.  Its dual-scale online method
keeps the first ``num_bf16_fallback_layers`` (default 5) ``blocks.N`` of Wan2.2 in BF16
(``vllm_omni/quantization/mxfp4_config.py``, as summarised in our dual-scale reference notes) --
that option is ``QuantConfig.num_bf16_fallback_layers`` here, generalised to every block container
and to the last blocks as well.  The entries for the other classes are our choice by the same
reasoning, not copied from a vLLM-Omni table.

LLMs: ``lm_head`` and the output embedding (tied to the input embedding when
``tie_word_embeddings``) stay float, as msModelSlim's default adapters and ``calibrate`` do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

__all__ = ["DefaultFloat", "ARCH_DEFAULTS", "BLOCK_CONTAINERS", "default_float_layers", "fallback_blocks",
           "kept_float_by_defaults", "FALLBACK_SIDES"]

FALLBACK_SIDES = ("first", "last", "both")


@dataclass(frozen=True)
class DefaultFloat:
    pattern: str
    reason: str


_EMB = "conditioning embedder (timestep / text / guidance): feeds every block's modulation"
_MOD = "adaLN modulation: scale / shift / gate of every token in the block"
_OUT = "final layer: writes the model output (noise / velocity) directly"
_PATCH = "patch embedder: reads raw latents (K = channels x patch, below scheme block sizes)"

ARCH_DEFAULTS: dict[str, tuple[DefaultFloat, ...]] = {
    "*": (
        DefaultFloat("lm_head", "LM head / tied output embedding stays float (msModelSlim default, calibrate)"),
    ),
    "WanTransformer3DModel": (
        DefaultFloat("condition_embedder.time_embedder", _EMB),
        DefaultFloat("condition_embedder.time_proj", _MOD + " (Wan: one shared projection for all blocks)"),
        DefaultFloat("condition_embedder.text_embedder", _EMB),
        DefaultFloat("condition_embedder.image_embedder", _EMB + " (I2V image embedder)"),
        DefaultFloat("proj_out", _OUT),
    ),
    "QwenImageTransformer2DModel": (
        DefaultFloat("time_text_embed", _EMB),
        DefaultFloat("img_in", _PATCH),
        DefaultFloat("txt_in", "text-stream input projection of the conditioning embeddings"),
        DefaultFloat("*.img_mod.*", _MOD),
        DefaultFloat("*.txt_mod.*", _MOD),
        DefaultFloat("norm_out", _OUT + " (AdaLayerNormContinuous modulation)"),
        DefaultFloat("proj_out", _OUT),
    ),
    "FluxTransformer2DModel": (
        DefaultFloat("time_text_embed", _EMB),
        DefaultFloat("context_embedder", "text-stream input projection of the T5 embeddings"),
        DefaultFloat("x_embedder", _PATCH),
        DefaultFloat("*.norm1.linear", _MOD),
        DefaultFloat("*.norm1_context.linear", _MOD),
        DefaultFloat("single_transformer_blocks.*.norm.linear", _MOD),
        DefaultFloat("norm_out", _OUT + " (AdaLayerNormContinuous modulation)"),
        DefaultFloat("proj_out", _OUT),
    ),
    "ZImageTransformer2DModel": (
        DefaultFloat("t_embedder", _EMB),
        DefaultFloat("cap_embedder", _EMB + " (caption features)"),
        DefaultFloat("all_x_embedder", _PATCH),
        DefaultFloat("*.adaLN_modulation.*", _MOD),
        DefaultFloat("all_final_layer", _OUT + " (with its adaLN modulation)"),
    ),
}

# the numbered block containers of each class, in execution order (for first / last N blocks)
BLOCK_CONTAINERS: dict[str, tuple[str, ...]] = {
    "WanTransformer3DModel": ("blocks",),
    "QwenImageTransformer2DModel": ("transformer_blocks",),
    "FluxTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "ZImageTransformer2DModel": ("noise_refiner", "context_refiner", "layers"),
}


def _output_embedding_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    if get is None:
        return None
    try:
        emb = get()
    except (NotImplementedError, AttributeError, TypeError):
        return None
    if emb is None:
        return None
    return next((n for n, m in model.named_modules() if m is emb), None)


def default_float_layers(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """``{linear name: reason}`` for the table entries that match ``model`` (class name + ``"*"``)."""
    from ..integrations.selection import match_patterns

    arch = type(model).__name__
    out: dict[str, str] = {}
    head = _output_embedding_name(model)
    if head and head in names:
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        out[head] = "output embedding" + (" (tied to the input embedding)" if tied else "") + " stays float"
    for key in (arch, "*"):
        for entry in ARCH_DEFAULTS.get(key, ()):
            hits = match_patterns([entry.pattern], names, allow_unmatched=True)[entry.pattern]
            for n in hits:
                out.setdefault(n, f"default float ({key if key != '*' else 'all models'}: {entry.pattern!r}): "
                                  f"{entry.reason}")
    return out


def fallback_blocks(model: nn.Module, names: Sequence[str], count: int, side: str = "first") -> dict[str, str]:
    """``{linear name: reason}`` for the layers of the first / last ``count`` numbered blocks.

    With a known architecture (``BLOCK_CONTAINERS``) the containers are one sequence in execution
    order (Flux: double-stream blocks, then single-stream blocks); otherwise each container
    (``<name>.<index>``, e.g. ``model.layers``) is counted on its own.
    """
    from ..integrations.selection import BLOCK_RE, SelectionError

    if count <= 0:
        return {}
    if side not in FALLBACK_SIDES:
        raise ValueError(f"bf16_fallback_side must be one of {FALLBACK_SIDES}, got {side!r}")
    containers = BLOCK_CONTAINERS.get(type(model).__name__)
    block_of: dict[str, tuple[str, int]] = {}
    for n in names:
        m = BLOCK_RE.match(n)
        if not m:
            continue
        cont = m.group("block").rsplit(".", 1)[0]
        if containers is not None and cont not in containers:
            continue
        block_of[n] = (cont, int(m.group("idx")))
    if not block_of:
        raise SelectionError(f"num_bf16_fallback_layers={count}: no layer name contains a numbered block "
                             f"('<container>.<index>.'), e.g. {list(names)[:3]}")
    if containers is not None:
        seqs = {"": sorted(set(block_of.values()), key=lambda b: (containers.index(b[0]), b[1]))}
    else:
        seqs = {}
        for b in set(block_of.values()):
            seqs.setdefault(b[0], []).append(b)
        for v in seqs.values():
            v.sort(key=lambda b: b[1])
    chosen: dict[tuple[str, int], str] = {}
    for seq in seqs.values():
        if side in ("first", "both"):
            for b in seq[:count]:
                chosen[b] = "first"
        if side in ("last", "both"):
            for b in seq[-count:]:
                chosen.setdefault(b, "last")
    return {n: f"num_bf16_fallback_layers={count} ({chosen[b]} blocks stay float): {b[0]}.{b[1]}"
            for n, b in block_of.items() if b in chosen}


def kept_float_by_defaults(model: nn.Module, names: Sequence[str], config) -> dict[str, str]:
    """What ``plan_quantization`` keeps float for ``config`` beyond the user's own entries."""
    out: dict[str, str] = {}
    if getattr(config, "apply_defaults", True):
        out.update(default_float_layers(model, names))
    n = int(getattr(config, "num_bf16_fallback_layers", 0) or 0)
    if n:
        for name, why in fallback_blocks(model, names, n, getattr(config, "bf16_fallback_side", "first")).items():
            out.setdefault(name, why)
    return out
