"""Real diffusers DiT classes at small sizes (``omni_npu_quant.models.dit``), built once per session."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from omni_npu_quant.models.dit import SMALL_DIT_CONFIGS, build_small_dit, build_small_wan_pipeline  # noqa: E402

CLASSES = sorted(SMALL_DIT_CONFIGS)
# calibration settings small enough for a shared 2-core CPU, same code path as the defaults
FAST_CALIB = dict(max_rows=64, alphas=(0.5,), clamps=(None,), progress=False)


@pytest.fixture(scope="session")
def dit_dirs(tmp_path_factory):
    """``{class name: saved diffusers model directory}`` (bf16 safetensors + config.json)."""
    root = tmp_path_factory.mktemp("dits")
    out = {}
    for name in CLASSES:
        m = build_small_dit(name, seed=7)
        m.save_pretrained(str(root / name))
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def wan_pipeline_dir(tmp_path_factory):
    """A complete small Wan2.2-style pipeline directory: transformer + transformer_2, VAE, UMT5, tokenizer."""
    return build_small_wan_pipeline(tmp_path_factory.mktemp("wanpipe") / "pipe", seed=3, dtype=torch.bfloat16)
