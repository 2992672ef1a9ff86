"""Complete small diffusers pipelines with random weights, built locally (no hub), for trajectory tests.

The Wan2.2 pipeline builder lives in ``omni_npu_quant.models.dit`` (``build_small_wan_pipeline``);
this module adds a text-to-image FLUX.1 pipeline assembled the same way, plus ``build_small_pipeline``
that dispatches by family name:

* ``build_small_flux_pipeline(dir)`` -- ``FluxPipeline`` with the small ``FluxTransformer2DModel`` of
  ``dit.SMALL_DIT_CONFIGS`` (1 double- + 1 single-stream block, width 512, guidance embedding), an
  ``AutoencoderKL`` (16 latent channels, 2 levels of width 8 / 16: an 8x8 latent per 32x32 image after
  FLUX's 2x2 packing), a 1-layer ``CLIPTextModel`` (width 512 = the pooled projection) and a 1-layer
  ``T5EncoderModel`` (width 512 = ``joint_attention_dim``), both with word-level tokenizers.
  FLUX.1-dev style: guidance is an embedding, so one transformer call per step (no CFG batch).

Everything is random: the images mean nothing; only *differences* between a float run and a
quantized run of the same pipeline are meaningful.
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["build_small_flux_pipeline", "build_small_pipeline", "PIPELINE_FAMILIES", "default_call"]

PIPELINE_FAMILIES = ("wan", "flux")


def _word_tokenizer(vocab_size: int, max_length: int):
    from .dit import _word_tokenizer as wt

    tok = wt(vocab_size)
    tok.model_max_length = max_length
    return tok


def build_small_flux_pipeline(out_dir, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Assemble a small random ``FluxPipeline`` and ``save_pretrained`` it to ``out_dir``."""
    import diffusers as d
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .dit import build_small_dit

    torch.manual_seed(seed)
    vae = d.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                          latent_channels=16, norm_num_groups=8, sample_size=32, scaling_factor=0.3611,
                          shift_factor=0.1159).eval()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=512, intermediate_size=512, num_hidden_layers=1,
                                        num_attention_heads=8, max_position_embeddings=16, projection_dim=512,
                                        eos_token_id=1, pad_token_id=0, bos_token_id=2)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=512, d_kv=64, d_ff=512, num_layers=1, num_heads=8,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16)).eval()
    transformer = build_small_dit("FluxTransformer2DModel", seed=seed, dtype=dtype)
    pipe = d.FluxPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                          text_encoder=clip.to(dtype), tokenizer=_word_tokenizer(64, 16),
                          text_encoder_2=t5.to(dtype), tokenizer_2=_word_tokenizer(64, 16),
                          transformer=transformer)
    out = Path(out_dir)
    pipe.save_pretrained(str(out))
    return out


def build_small_pipeline(family: str, out_dir, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """``family``: ``wan`` (Wan2.2 T2V, two experts; ``dit.build_small_wan_pipeline``) or ``flux``."""
    if family == "wan":
        from .dit import build_small_wan_pipeline

        return build_small_wan_pipeline(out_dir, seed=seed, dtype=dtype)
    if family == "flux":
        return build_small_flux_pipeline(out_dir, seed=seed, dtype=dtype)
    raise ValueError(f"no small pipeline for family {family!r}; known: {', '.join(PIPELINE_FAMILIES)}")


def default_call(family: str) -> dict:
    """Small-but-real call arguments for the small pipelines (resolution, frames, text length, guidance)."""
    if family == "wan":
        return dict(height=32, width=32, num_frames=5, guidance_scale=3.0, max_sequence_length=16)
    if family == "flux":
        return dict(height=32, width=32, guidance_scale=3.5, max_sequence_length=16)
    raise ValueError(f"no default call for family {family!r}; known: {', '.join(PIPELINE_FAMILIES)}")
