"""Genuine msModelSlim 26.1.0 SVD checkpoints, produced on CPU in the test: ``svd_res`` (rank 8) then
``linear_quant`` (W4A4 MXFP4, W8A8 dynamic) on a tiny seeded Llama, saved by the AscendV1 saver; read by our reader,
checked against the float model and run on reference / npu-sim:A5 / npu-sim:A2, and through ``parity``.

If msmodelslim cannot be imported these tests FAIL with the install instruction (they are the external oracle)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "checkpoint"))
import msms_gen  # noqa: E402

RANK = 8
SVD_PRE = f"    - type: svd_res\n      rank: {RANK}\n      include: [\"*\"]\n"
LABELS = {"w4a4_mxfp4": ("W4A4_MXFP4_SVD", "mxfp4_svd"), "w8a8_dynamic": ("W8A8_SVD_DYNAMIC", "w8a8_dynamic_svd")}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def svd_ckpts(tmp_path_factory):
    try:
        import msmodelslim  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        pytest.fail(f"{msms_gen.INSTALL_HINT} ({e})", pytrace=False)
    base = tmp_path_factory.mktemp("msms_svd")
    model = msms_gen.make_tiny_llama(base / "model", torch.bfloat16, hidden=64, inter=128, layers=1)
    calib = msms_gen.small_calib(base / "calib4.jsonl")
    out = {}
    for scheme in LABELS:
        cfg = msms_gen.write_config(base / f"{scheme}.yaml", scheme, pre=SVD_PRE, dataset=str(calib))
        out[scheme] = msms_gen.quantize(model, base / scheme, cfg)
    return model, out


def _float_model(model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("scheme", list(LABELS))
def test_saver_labels_and_our_reader(svd_ckpts, scheme):
    from omni_npu_quant.checkpoint import load_checkpoint, validate_checkpoint

    model_dir, outs = svd_ckpts
    out = outs[scheme]
    label, name = LABELS[scheme]
    desc = json.loads((out / "quant_model_description.json").read_text())
    p = "model.layers.0.mlp.down_proj"
    assert desc[f"{p}.weight"] == label and desc[f"{p}.svd_lowrank_l1"] == "FLOAT"
    assert desc[f"{p}.svd_lowrank_l2"] == "FLOAT"
    # the saver's QUANT_TYPE_PRIORITY lists only W4A4_MXFP4_SVD: the dynamic model keeps W8A8_DYNAMIC
    assert desc["model_quant_type"] == ("W4A4_MXFP4_SVD" if scheme == "w4a4_mxfp4" else "W8A8_DYNAMIC")
    assert validate_checkpoint(out) == []
    ck = load_checkpoint(out)
    assert len(ck.layers) == len(LINEARS)
    assert not [k for k in ck.float_tensors if "svd_lowrank" in k]
    float_w = {k: v.detach() for k, v in _float_model(model_dir).named_parameters()}
    for lin in LINEARS:
        prefix = next(k for k in ck.layers if k.endswith(lin))
        e = ck.layers[prefix]
        assert (e.label, e.scheme_name) == (label, name)
        l1, l2 = e.tensors["svd_lowrank_l1"], e.tensors["svd_lowrank_l2"]
        w = float_w[prefix + ".weight"].float()
        assert l1.dtype == l2.dtype == torch.bfloat16
        assert l1.shape == (RANK, w.shape[1]) and l2.shape == (w.shape[0], RANK)
        # semantics: L2 . L1 is (close to) the best rank-8 approximation of the float weight (Eckart-Young) and
        # residual + L2 . L1 represents the weight up to the residual's quantization error
        s = torch.linalg.svdvals(w)
        best = float(s[RANK:].square().sum().sqrt())
        assert (w - l2.float() @ l1.float()).norm() <= 1.1 * best + 1e-3 * float(w.norm())
        deq = e.scheme().dequantize_weight(e.tensors, e.k)
        tol = 0.12 if scheme == "w4a4_mxfp4" else 0.01
        assert (deq - w).norm() / w.norm() < tol, (lin, float((deq - w).norm() / w.norm()))


def test_whole_model_on_every_backend(svd_ckpts):
    from omni_npu_quant.integrations.torch.api import load_quantized

    model_dir, outs = svd_ckpts
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_logits = _float_model(model_dir)(ids).logits.float()
        for scheme, out in outs.items():
            got = {}
            for be in ("reference", "npu-sim:A5", "npu-sim:A2"):
                m = load_quantized(_float_model(model_dir), out, be)
                kinds = {type(mod).__name__ for mod in m.modules()}
                assert "Linear" not in kinds or all(
                    not isinstance(mod, torch.nn.Linear) or n == "lm_head" for n, mod in m.named_modules())
                got[be] = m(ids).logits.float()
            cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()  # noqa
            assert cos(got["reference"], ref_logits) > (0.98 if scheme == "w4a4_mxfp4" else 0.999), scheme
            assert cos(got["npu-sim:A5"], got["reference"]) > 0.999, scheme
            assert cos(got["npu-sim:A2"], ref_logits) > 0.99, scheme  # A2: weight-only residual for MX


def test_parity_cli_side_by_side(svd_ckpts, tmp_path):
    import shutil

    from omni_npu_quant.cli.main import main

    model_dir, outs = svd_ckpts
    ck = tmp_path / "ck"
    shutil.copytree(outs["w4a4_mxfp4"], ck)
    shutil.copy(model_dir / "config.json", ck / "config.json")
    rc = main(["parity", "--checkpoint", str(ck), "--backends", "reference,npu-sim:A2,npu-sim:A5", "--layers",
               "*mlp.down_proj,*self_attn.q_proj", "--seq", "8", "--repeat", "1", "--no-plot", "--no-e2e",
               "--fail-on", "strict", "--out", str(tmp_path / "par")])
    assert rc == 0
    rep = json.loads((tmp_path / "par" / "parity.json").read_text())
    assert len(rep["layers"]) == 2
    for lay in rep["layers"]:
        assert lay["scheme"] == "mxfp4_svd" and set(lay["results"]) == {"reference", "npu-sim:A2", "npu-sim:A5"}
        assert lay["results"]["npu-sim:A5"]["quant"]["identical"] is True
