"""Real diffusers DiT classes at small widths / depths, with seeded random weights (no hub).

``build_small_dit(name)`` constructs diffusers 0.42's own classes (``WanTransformer3DModel``,
``QwenImageTransformer2DModel``, ``FluxTransformer2DModel``, ``ZImageTransformer2DModel``) from
their real constructors: only widths, depths and vocabulary-like sizes are reduced.  The hidden
width is 512 so dual-scale MXFP4 (whole 512-channel input blocks) applies to the attention
projections; the layers whose K is not a multiple of a scheme's block (Z-Image's 1365-wide
feed-forward) exercise the "kept float with a reason" path.

``example_call(model)`` returns one ``(args, kwargs)`` call in the form the class's pipeline uses,
and ``build_small_wan_pipeline(dir)`` assembles and saves a complete Wan2.2-style text-to-video
pipeline (two expert transformers, scheduler, VAE, UMT5 text encoder, word-level tokenizer built
with the ``tokenizers`` package), all small and random, for tests of the capture / CLI path.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["SMALL_DIT_CONFIGS", "build_small_dit", "example_call", "build_small_wan_pipeline", "call_output",
           "BoundCall"]

# constructor arguments of each class at small size (everything else: the class defaults)
SMALL_DIT_CONFIGS: dict[str, dict] = {
    "WanTransformer3DModel": dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=128,
                                  in_channels=16, out_channels=16, text_dim=512, freq_dim=256, ffn_dim=1024,
                                  num_layers=2, rope_max_seq_len=64),
    "QwenImageTransformer2DModel": dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                        attention_head_dim=128, num_attention_heads=4, joint_attention_dim=512,
                                        axes_dims_rope=(16, 56, 56)),
    "FluxTransformer2DModel": dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                   attention_head_dim=128, num_attention_heads=4, joint_attention_dim=512,
                                   pooled_projection_dim=512, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    "ZImageTransformer2DModel": dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=512,
                                     n_layers=2, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=512,
                                     axes_dims=[32, 48, 48], axes_lens=[64, 32, 32]),
}


def _diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - a test extra
        raise RuntimeError(f"the diffusers DiT classes need `pip install diffusers` ({e})") from e
    return diffusers


def build_small_dit(name: str, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16, **overrides) -> nn.Module:
    """A diffusers DiT of class ``name`` at small size, seeded random weights, eval mode."""
    if name not in SMALL_DIT_CONFIGS:
        raise ValueError(f"no small config for {name!r}; known: {sorted(SMALL_DIT_CONFIGS)}")
    cls = getattr(_diffusers(), name)
    torch.manual_seed(seed)
    model = cls(**{**SMALL_DIT_CONFIGS[name], **overrides})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output projections would hide every error
            if p.dim() >= 2 and not bool(p.abs().sum()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    from .loading import quiet_third_party

    with quiet_third_party():  # diffusers warns about _keep_in_fp32_modules on a plain .to(dtype)
        return model.to(dtype).eval()


def example_call(model: nn.Module, *, batch: int = 1, seed: int = 0, dtype: torch.dtype | None = None,
                 tokens: int = 16, text_tokens: int = 8) -> tuple[tuple, dict]:
    """One forward call ``(args, kwargs)`` for ``model`` as its pipeline would make it (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    dtype = dtype or next(p for p in model.parameters() if p.is_floating_point()).dtype
    name = type(model).__name__

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    side = int(round(tokens ** 0.5))
    if name == "WanTransformer3DModel":
        p = cfg.patch_size
        return (), dict(hidden_states=rnd(batch, cfg.in_channels, 2 * p[0], side * p[1], side * p[2]),
                        timestep=torch.full((batch,), 500, dtype=torch.long),
                        encoder_hidden_states=rnd(batch, text_tokens, cfg.text_dim), return_dict=False)
    if name == "QwenImageTransformer2DModel":
        return (), dict(hidden_states=rnd(batch, side * side, cfg.in_channels),
                        encoder_hidden_states=rnd(batch, text_tokens, cfg.joint_attention_dim),
                        encoder_hidden_states_mask=torch.ones(batch, text_tokens, dtype=torch.long),
                        timestep=torch.full((batch,), 0.5).to(dtype), img_shapes=[[(1, side, side)]] * batch,
                        return_dict=False)
    if name == "FluxTransformer2DModel":
        kw = dict(hidden_states=rnd(batch, side * side, cfg.in_channels),
                  encoder_hidden_states=rnd(batch, text_tokens, cfg.joint_attention_dim),
                  pooled_projections=rnd(batch, cfg.pooled_projection_dim),
                  timestep=torch.full((batch,), 0.5).to(dtype), img_ids=torch.zeros(side * side, 3),
                  txt_ids=torch.zeros(text_tokens, 3), return_dict=False)
        if cfg.guidance_embeds:
            kw["guidance"] = torch.full((batch,), 3.5).to(dtype)
        return (), kw
    if name == "ZImageTransformer2DModel":
        ps = cfg.all_patch_size[0]
        x = [rnd(cfg.in_channels, 1, side * ps, side * ps) for _ in range(batch)]
        caps = [rnd(text_tokens, cfg.cap_feat_dim) for _ in range(batch)]
        return (x, torch.full((batch,), 0.5).to(dtype), caps), dict(return_dict=False)
    raise ValueError(f"example_call: no example inputs for {name}; pass inputs explicitly")


def call_output(out) -> torch.Tensor:
    """The main tensor of a DiT forward's output (``.sample``, a tuple's first item, a list stacked)."""
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, (tuple, list)) and out and not isinstance(out[0], torch.Tensor):
        out = out[0]
    elif isinstance(out, tuple):
        out = out[0]
    if isinstance(out, (list, tuple)):
        out = torch.stack([o for o in out])
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")
    return out


# ------------------------------------------------------------------------------------------------
def _word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 3)]
    common = "a the cat dog red blue car tree sky walks runs on in over under house water light big small".split()
    words[3:3 + len(common)] = common
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=64)


def build_small_wan_pipeline(out_dir, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                             two_experts: bool = True, boundary_ratio: float = 0.5) -> Path:
    """Assemble a complete small Wan2.2-style T2V pipeline and ``save_pretrained`` it to ``out_dir``.

    ``transformer`` (high-noise expert) and ``transformer_2`` (low-noise expert, different seed)
    are ``WanTransformer3DModel`` at the small config; the VAE is an ``AutoencoderKLWan`` with
    base width 8; the text encoder a 1-layer ``UMT5EncoderModel`` (d_model 512 = the transformers'
    ``text_dim``); the tokenizer a word-level ``tokenizers`` model of 64 words.
    """
    d = _diffusers()
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae = d.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1,
                             temperal_downsample=[False], attn_scales=[]).eval()
    te = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=512, d_kv=64, d_ff=512, num_layers=1, num_heads=8,
                                     relative_attention_num_buckets=8, relative_attention_max_distance=16)).eval()
    sched = d.FlowMatchEulerDiscreteScheduler(shift=3.0)
    t1 = build_small_dit("WanTransformer3DModel", seed=seed, dtype=dtype)
    t2 = build_small_dit("WanTransformer3DModel", seed=seed + 1, dtype=dtype) if two_experts else None
    pipe = d.WanPipeline(tokenizer=_word_tokenizer(64), text_encoder=te.to(dtype), vae=vae, scheduler=sched,
                         transformer=t1, transformer_2=t2, boundary_ratio=boundary_ratio if two_experts else None)
    out = Path(out_dir)
    pipe.save_pretrained(str(out))
    return out


class BoundCall(nn.Module):
    """``model`` with one call's other arguments bound: ``BoundCall(model, call)(x)`` runs
    ``model(*args, **kwargs)`` with the call's main input replaced by ``x`` and returns the output tensor.

    The main input is ``hidden_states`` (keyword) if present, else the first positional argument; a list
    of tensors there (Z-Image) is passed as ``x.unbind(0)``.  The wrapper *shares* the model's child
    modules (same names, same objects, no prefix), so tools that look layers up by name, or swap them,
    work on it as on the model itself.
    """

    def __init__(self, model: nn.Module, call: tuple[tuple, dict]):
        super().__init__()
        object.__setattr__(self, "_inner", model)
        self._modules = model._modules  # shared: setattr on the wrapper replaces the model's child too
        args, kwargs = tuple(call[0]), dict(call[1])
        if "hidden_states" in kwargs:
            self._main, main = ("kw", "hidden_states"), kwargs["hidden_states"]
        elif args:
            self._main, main = ("arg", 0), args[0]
        else:
            raise ValueError("BoundCall: the call has neither hidden_states nor a positional input")
        self._is_list = isinstance(main, (list, tuple))
        self.main_input = torch.stack(list(main)) if self._is_list else main
        self._args, self._kwargs = args, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = list(x.unbind(0)) if self._is_list else x
        args, kwargs = list(self._args), dict(self._kwargs)
        if self._main[0] == "kw":
            kwargs[self._main[1]] = v
        else:
            args[0] = v
        return call_output(self._inner(*args, **kwargs))
