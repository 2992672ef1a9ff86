"""Small random diffusers pipelines for the trajectory tests (built once per session, saved to disk).

* ``flux_dir`` -- ``FluxPipeline`` (``omni_npu_quant.models.pipelines``), one transformer call per step;
* ``wan_dir``  -- the Wan2.2 T2V pipeline of ``omni_npu_quant.models.dit`` (transformer + transformer_2);
* ``planted_flux_dir`` -- ``flux_dir`` with one sensitive layer group planted: every 32nd input column
  of ``transformer_blocks.0.ff.net.2`` scaled by 40, so a 4-bit per-32-group weight scale is set by that
  column and the rest of each group rounds to nearly nothing.  Random weights have no outliers and
  spread the quantization error evenly (every kind group removes a similar share, ~0.5 dB), so the
  search would have nothing to find; the planted group is the one a real model's ``img_mlp`` plays.

The requests are small (32x32, 2 steps, 5 frames for Wan) so that CPU CI stays within minutes;
the images mean nothing, only float-vs-quantized differences do.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from omni_npu_quant.models.pipelines import build_small_pipeline, default_call  # noqa: E402
from omni_npu_quant.parity.trajectory import TrajectoryRequest  # noqa: E402


def request(family: str, **kw) -> TrajectoryRequest:
    call = dict(default_call(family))
    if family == "wan":
        call["guidance_scale"] = 1.0  # no CFG batch: half the transformer calls
    return TrajectoryRequest(**{"prompt": "a red cat on the house", "seed": 0, "steps": 2, **call, **kw})


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory):
    return build_small_pipeline("flux", tmp_path_factory.mktemp("flux") / "pipe", seed=3)


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory):
    return build_small_pipeline("wan", tmp_path_factory.mktemp("wan") / "pipe", seed=3)


@pytest.fixture(scope="session")
def planted_flux_dir(flux_dir, tmp_path_factory):
    import diffusers

    from omni_npu_quant.models.loading import quiet_third_party

    with quiet_third_party():
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(flux_dir), torch_dtype=torch.bfloat16)
        with torch.no_grad():
            pipe.transformer.transformer_blocks[0].ff.net[2].weight[:, ::32] *= 40
        out = tmp_path_factory.mktemp("planted") / "pipe"
        pipe.save_pretrained(str(out))
    return out
