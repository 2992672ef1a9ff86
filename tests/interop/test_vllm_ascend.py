"""Issue 17 item 6: vllm-ascend 0.23.0's own W8A8 and W8A8_DYNAMIC linear methods (``get_weight`` /
``get_*_param`` -> vLLM's loader cast -> ``process_weights_after_loading`` -> ``apply``), run on the torch_npu
emulator (A2), compute BIT-IDENTICAL outputs to our NPU backend (``npu-sim:A2``) on checkpoints our quantizer and
writer produce, for bf16 and fp16 models.  Before the scales were computed in the model dtype (numerics.int8),
vllm-ascend's cast of our fp32 ``weight_scale`` / ``input_scale`` into its model-dtype parameters changed them, and
about 20% of the W8A8_DYNAMIC outputs differed by one ulp."""
from __future__ import annotations

import pytest
import torch

from interop_models import tiny_llama, write_ours
from omni_npu_quant.backends.registry import get_backend
from omni_npu_quant.checkpoint import load_checkpoint
from omni_npu_quant.schemes.registry import get_scheme
from vllm_ascend_src import Layer

SCHEME = {"W8A8_DYNAMIC": "w8a8_dynamic", "W8A8": "w8a8_static", "W8A16": "w8a16"}


def run_vllm_ascend(method_cls, tensors, n, k, dtype, prefix, x):
    method = method_cls()
    layer = Layer(method, tensors, n, k, dtype, prefix)
    method.process_weights_after_loading(layer)
    bias = tensors.get("bias")
    bias = None if bias is None or "quant_bias" in tensors else bias.to(dtype)  # vLLM's bias parameter: model dtype
    with torch.no_grad():
        return method.apply(layer, x, bias), layer


def compare_layers(va_methods, ck, dtype, seed=7):
    """Per layer: (prefix, vllm-ascend output, our npu-sim:A2 output)."""
    npu = get_backend("npu-sim:A2")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for prefix, e in sorted(ck.layers.items()):
        x = (torch.randn(9, e.k, generator=gen) * 2).to(dtype)
        if "input_scale" in e.tensors:  # static: mostly inside the calibrated range, a few values beyond it
            s, off = float(e.tensors["input_scale"].reshape(-1)[0]), float(e.tensors["input_offset"].reshape(-1)[0])
            lo, hi = (-128 - off) * s, (127 - off) * s
            x = (lo + (hi - lo) * (torch.rand(9, e.k, generator=gen) * 1.1 - 0.05)).to(dtype)
        y_va, layer = run_vllm_ascend(va_methods[e.label], e.tensors, e.n, e.k, dtype, prefix, x)
        assert set(layer.loaded) >= set(e.tensors) - {"bias", "weight_scale", "weight_offset"}, (prefix, layer.loaded)
        p = npu.prepare(get_scheme(e.scheme_name), e.tensors, dtype, k=e.k, where=prefix)
        out.append((prefix, y_va, npu.apply(p, x)))
    return out


# (label, model dtype, attention biases); W8A16 bf16 without biases: see the refusal test below
CASES = [("W8A8_DYNAMIC", torch.bfloat16, True), ("W8A8", torch.bfloat16, True), ("W8A8", torch.float16, True),
         ("W8A16", torch.bfloat16, False), ("W8A16", torch.float16, True)]


@pytest.mark.parametrize("label,dtype,bias", CASES, ids=["W8A8_DYNAMIC-bf16", "W8A8-bf16", "W8A8-fp16",
                                                         "W8A16-bf16-nobias", "W8A16-fp16"])
def test_vllm_ascend_methods_bit_identical_on_our_checkpoint(va_methods, tmp_path, label, dtype, bias):
    ck = load_checkpoint(write_ours(tiny_llama(dtype, bias=bias), tmp_path / "ours", SCHEME[label]))
    assert {e.label for e in ck.layers.values()} == {label} and len(ck.layers) == 7
    diffs = []
    for prefix, y_va, y in compare_layers(va_methods, ck, dtype):
        assert y_va.dtype == y.dtype == dtype and y_va.shape == y.shape, prefix
        diffs.append((prefix, int((y_va.float() != y.float()).sum()), y.numel()))
    assert all(d == 0 for _, d, _ in diffs), f"elements that differ (of all) per layer: {diffs}"


def test_vllm_ascend_w8a8_dynamic_fp16_is_refused_by_the_op_contract(va_methods, tmp_path):
    """vllm-ascend 0.23's dense W8A8_DYNAMIC method keeps ``weight_scale`` in the model dtype and passes it to
    ``npu_quant_matmul`` with a ``pertoken_scale``; for an fp16 model that is an fp16 scale, which the op's documented
    contract (fp32, or bf16 with bf16 output) does not take -- the emulator refuses it the way the op would.  Our
    NPU backend serves the same layer (fp32 scale).  Recorded here so a change on either side is noticed."""
    from omni_npu_quant.npu_sim import NpuSimError

    ck = load_checkpoint(write_ours(tiny_llama(torch.float16), tmp_path / "ours", "w8a8_dynamic"))
    prefix, e = sorted(ck.layers.items())[0]
    x = torch.randn(3, e.k, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    with pytest.raises(NpuSimError, match="DT_FLOAT16"):
        run_vllm_ascend(va_methods["W8A8_DYNAMIC"], e.tensors, e.n, e.k, torch.float16, prefix, x)
    npu = get_backend("npu-sim:A2")
    y = npu.apply(npu.prepare(get_scheme("w8a8_dynamic"), e.tensors, torch.float16, k=e.k, where=prefix), x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def _calibrate(tmp_path, model_dir, name, extra):
    from omni_npu_quant.cli.main import main

    out = tmp_path / name
    assert main(["calibrate", "--model", str(model_dir), "--out", str(out), "--scheme", "w8a8_dynamic", "--no-progress",
                 "--num-samples", "2", "--seq-len", "32", "--no-eval"] + extra) == 0
    return out


def test_vllm_ascend_loads_folded_smoothed_checkpoint(va_methods, tmp_path):
    """Issue 17 item 6: a calibrated (smoothed) checkpoint is not understood by vllm-ascend -- its label lookup by
    ``<prefix>.weight`` fails on the ``p.linear.*`` wrapper --, while ``--fold-smooth-into-norm unsmooth`` writes plain
    AscendV1: vllm-ascend's own lookup finds W8A8_DYNAMIC for every linear (packed qkv_proj / gate_up_proj too) and its
    W8A8_DYNAMIC method computes bit-identical outputs to our NPU backend on every layer."""
    import json

    from vllm_ascend_src import quant_type_lookup

    lookup = quant_type_lookup()
    model_dir = tmp_path / "model"
    tiny_llama(torch.bfloat16, layers=1).save_pretrained(model_dir)
    wrapped = _calibrate(tmp_path, model_dir, "wrapped", [])
    folded = _calibrate(tmp_path, model_dir, "folded", ["--fold-smooth-into-norm", "unsmooth"])
    names = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]
    d_wrapped = json.loads((wrapped / "quant_model_description.json").read_text())
    with pytest.raises(KeyError):
        lookup(d_wrapped, "model.layers.0.self_attn.qkv_proj", "linear", PACKED)
    d_folded = json.loads((folded / "quant_model_description.json").read_text())
    assert {lookup(d_folded, f"model.layers.0.{n}", "linear", PACKED) for n in names} == {"W8A8_DYNAMIC"}
    ck = load_checkpoint(folded)
    assert len(ck.layers) == 7 and not any("mul_scale" in e.tensors for e in ck.layers.values())
    diffs = [(p, int((a.float() != b.float()).sum())) for p, a, b in compare_layers(va_methods, ck, torch.bfloat16)]
    assert all(d == 0 for _, d in diffs), diffs


def test_vllm_ascend_w8a16_bf16_bias_is_refused_by_the_op_contract(va_methods, tmp_path):
    """vllm-ascend 0.23's W8A16 method hands vLLM's bias parameter (model dtype) to ``npu_weight_quant_batchmatmul``;
    with bf16 activations on A2 the op's contract as the emulator implements it wants an fp32 bias, so a biased bf16
    layer is refused there, while our NPU backend passes fp32 and serves it.  Recorded so a change on either side
    (vllm-ascend, or the emulator's reading of the contract) is noticed."""
    from omni_npu_quant.npu_sim import NpuSimError

    ck = load_checkpoint(write_ours(tiny_llama(torch.bfloat16), tmp_path / "ours", "w8a16"))
    prefix, e = next((p, e) for p, e in sorted(ck.layers.items()) if "bias" in e.tensors)
    x = torch.randn(3, e.k, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with pytest.raises(NpuSimError, match="bias must be torch.float32"):
        run_vllm_ascend(va_methods["W8A16"], e.tensors, e.n, e.k, torch.bfloat16, prefix, x)
    npu = get_backend("npu-sim:A2")
    y = npu.apply(npu.prepare(get_scheme("w8a16"), e.tensors, torch.bfloat16, k=e.k, where=prefix), x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
