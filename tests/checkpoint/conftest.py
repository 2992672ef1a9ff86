"""Fixtures: genuine msModelSlim 26.1.0 checkpoints generated on CPU once per session (lazily, per name).

If msmodelslim cannot be imported the tests that need it FAIL with the install instruction (no skip).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import msms_gen  # noqa: E402

# name -> (scheme qconfig, model dtype, saver, part_file_size, hidden)
REAL = {
    "w8a8_bf16": ("w8a8", torch.bfloat16, "ascendv1_saver", 0, 64),
    "w8a8_fp16": ("w8a8", torch.float16, "ascendv1_saver", 0, 64),
    "w8a8_dynamic_shard": ("w8a8_dynamic", torch.bfloat16, "ascendv1_saver", 1, 64),
    "w8a8_dynamic_fp16": ("w8a8_dynamic", torch.float16, "ascendv1_saver", 0, 64),
    "mxfp8": ("w8a8_mxfp8", torch.bfloat16, "ascendv1_saver", 0, 64),
    "mxfp4_mindie": ("w4a4_mxfp4", torch.bfloat16, "mindie_format_saver", 0, 64),
    "w4a8_mxfp": ("w4a8_mxfp", torch.bfloat16, "ascendv1_saver", 0, 64),
    "dualscale": ("dualscale", torch.bfloat16, "ascendv1_saver", 0, 512),
}


@pytest.fixture(scope="session")
def msmodelslim_required():
    try:
        import msmodelslim  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:  # fail loudly in CI: these tests are the external oracle
        pytest.fail(f"{msms_gen.INSTALL_HINT} ({e})", pytrace=False)


@pytest.fixture(scope="session")
def real_ckpt(tmp_path_factory, msmodelslim_required):
    """``real_ckpt(name) -> (model_dir, out_dir)``; each generated once per session."""
    cache: dict[str, tuple[Path, Path]] = {}
    base = tmp_path_factory.mktemp("msms")

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache:
            scheme, dtype, saver, part, hidden = REAL[name]
            d = base / name
            model = msms_gen.make_tiny_llama(d / "model", dtype, hidden=hidden, inter=2 * hidden,
                                             layers=1, heads=4, kv_heads=2)
            calib = msms_gen.small_calib(base / "calib4.jsonl")
            cfg = msms_gen.write_config(d / "cfg.yaml", scheme, saver, part, dataset=str(calib))
            cache[name] = (model, msms_gen.quantize(model, d / "out", cfg))
        return cache[name]

    return get
