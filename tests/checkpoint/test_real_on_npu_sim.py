"""Genuine msModelSlim 26.1.0 checkpoints of every label run on the NPU backend through the torch_npu
emulator (A2 and A5 profiles) and agree with the reference backend layer by layer."""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.backends.registry import get_backend
from omni_npu_quant.checkpoint import load_checkpoint
from omni_npu_quant.schemes.registry import get_scheme

NAMES = ["w8a8_bf16", "w8a8_fp16", "w8a8_dynamic_shard", "mxfp8", "mxfp4_mindie", "w4a8_mxfp", "dualscale"]
INT8 = {"w8a8_static", "w8a8_dynamic"}


@pytest.mark.parametrize("soc", ["A2", "A5"])
@pytest.mark.parametrize("name", NAMES)
def test_real_checkpoint_on_npu_sim(real_ckpt, name, soc):
    _, out = real_ckpt(name)
    ck = load_checkpoint(out)
    act = torch.float16 if name == "w8a8_fp16" else torch.bfloat16
    ref_be, npu_be = get_backend("reference"), get_backend(f"npu-sim:{soc}")
    gen = torch.Generator().manual_seed(7)
    assert ck.layers
    for prefix, e in ck.layers.items():
        scheme = get_scheme(e.scheme_name)
        x = (torch.randn(5, e.k, generator=gen) * 2).to(act)
        ref = ref_be.prepare(scheme, e.tensors, act, k=e.k, where=prefix)
        npu = npu_be.prepare(scheme, e.tensors, act, k=e.k, where=prefix)
        y_ref = ref_be.apply(ref, x).float()
        y_npu = npu_be.apply(npu, x).float()
        assert y_npu.shape == y_ref.shape and torch.isfinite(y_npu).all(), prefix
        native = scheme.name in INT8 or soc == "A5"
        if native:
            qa, qb = ref_be.quantize_activation(ref, x), npu_be.quantize_activation(npu, x)
            assert qa.keys() == qb.keys(), prefix
            for key in qa:  # the device quantizer's bytes equal the reference's
                assert torch.equal(qa[key].contiguous().view(torch.uint8), qb[key].contiguous().view(torch.uint8)), (prefix, key)
        if scheme.name in INT8:
            assert torch.equal(y_npu, y_ref), prefix  # exact int32 accumulation, same epilogue
        elif native:
            tol = 1e-3 * y_ref.abs().max() + 2 * torch.finfo(act).eps * y_ref.abs()
            assert ((y_npu - y_ref).abs() <= tol).all(), prefix
        else:  # A2 exact weight-side fallback: unquantized activations x exactly decoded weights
            w = scheme.dequantize_weight(e.tensors, e.k)
            oracle = x.float() @ w.T
            if "bias" in e.tensors:
                oracle = oracle + e.tensors["bias"].float()
            err = (y_npu - oracle).abs().max() / oracle.abs().max()
            limit = 1e-2 if scheme.name == "mxfp4_dual" else 8e-3  # bf16 output rounding (+ folded level-0 scale)
            assert err <= limit, (prefix, float(err))
