"""A second independent implementation: torchao's MX quantizer (``to_mx``, CPU path).

torchao ``ScaleCalculationMode.FLOOR`` is the OCP rule (our ``scale_alg=0``) and ``RCEIL`` the FP8
round-up rule (our ``scale_alg=1``); elements are rounded half to even with saturation.  Scale bytes
and element bytes (FP8, packed FP4 with the even element in the low nibble) must agree bit for bit on
finite inputs whose K is a multiple of 32 (torchao's requirement).  ``ci/setup.sh`` installs torchao
0.18.0, which does not pull another torch.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from omni_npu_quant.numerics import mx as MX
from omni_npu_quant.numerics.constants import E2M1, E4M3

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torchao_mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor", reason="torchao is not installed")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_to_mx_matches(dtype, gen):
    for _ in range(10):
        x = (torch.randn(8, 256, generator=gen) * 10 ** (torch.rand(8, 1, generator=gen) * 12 - 6)).to(dtype)
        x[0, :32] = 0  # zero block
        for mode, alg in ((ScaleCalculationMode.FLOOR, 0), (ScaleCalculationMode.RCEIL, 1)):
            s, d = torchao_mx.to_mx(x, torch.float8_e4m3fn, 32, mode)
            r = MX.mx_quantize(x, E4M3, "rint", alg)
            assert torch.equal(s.view(torch.uint8), r.codes), mode
            assert torch.equal(d.view(torch.uint8), MX.mx_encode(r.values, E4M3).view(torch.uint8)), mode
        s, d = torchao_mx.to_mx(x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR)
        r = MX.mx_quantize(x, E2M1, "rint", 0)
        assert torch.equal(s.view(torch.uint8), r.codes)
        assert torch.equal(d.view(torch.uint8), MX.mx_encode(r.values, E2M1))
