"""M = 0 (an empty batch) runs through every scheme on every CPU-runnable backend: an empty (.., N) output,
and empty quantizer outputs of the right trailing shapes."""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.backends import NpuBackend, ReferenceBackend
from omni_npu_quant.schemes.registry import SCHEMES, get_scheme

BACKENDS = {"reference": lambda: ReferenceBackend(), "npu-sim:A2": lambda: NpuBackend("A2", sim=True),
            "npu-sim:A2+fake-quant": lambda: NpuBackend("A2", sim=True, act_fake_quant=True),
            "npu-sim:A5": lambda: NpuBackend("A5", sim=True)}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("name", list(SCHEMES))
def test_empty_batch(name, backend, gen):
    s = get_scheme(name)
    k = 1024
    kw = dict(act_min=-1.0, act_max=1.0) if s.needs_calibration else {}
    t = s.quantize_weight(torch.randn(64, k, generator=gen), torch.randn(64, generator=gen), **kw)
    be = BACKENDS[backend]()
    p = be.prepare(s, t, torch.bfloat16)
    y = be.apply(p, torch.zeros(0, k, dtype=torch.bfloat16))
    assert y.shape == (0, 64) and y.dtype == torch.bfloat16
    y3 = be.apply(p, torch.zeros(2, 0, k, dtype=torch.bfloat16))
    assert y3.shape == (2, 0, 64)
    full = be.quantize_activation(p, torch.randn(3, k, generator=gen).to(torch.bfloat16))
    empty = be.quantize_activation(p, torch.zeros(0, k, dtype=torch.bfloat16))
    assert set(empty) == set(full)
    for key, v in empty.items():
        assert v.shape == (0, *full[key].shape[1:]) and v.dtype == full[key].dtype, key
