"""Model / data sources (transformers dir, state dict + factory, prompts, saved inputs) and the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from omni_npu_quant.calibration.sources import load_batches, load_model
from omni_npu_quant.checkpoint import load_checkpoint
from omni_npu_quant.cli.main import main
from omni_npu_quant.integrations.torch import load_quantized

from .conftest import make_hf_llama, run_calib

DIT1 = dict(model_layers=1, alphas=(0.5,), clamps=(None,), evaluate=False)


def test_prompt_files_byte_level_tiny_llama(tmp_path):
    lm = load_model("tiny-llama", layers=1)
    (tmp_path / "p.txt").write_text("hello\n\nworld é\n")
    calls = load_batches(str(tmp_path / "p.txt"), lm, seq_len=4)
    assert [c[0][0].tolist() for c in calls] == [[[104, 101, 108, 108]], [[119, 111, 114, 108]]]
    (tmp_path / "p.jsonl").write_text('{"text": "ab"}\n{"prompt": "c"}\n"d"\n')
    calls = load_batches(str(tmp_path / "p.jsonl"), lm)
    assert [c[0][0].tolist() for c in calls] == [[[97, 98]], [[99]], [[100]]]
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(ValueError, match="line 1 needs a 'text'"):
        load_batches(str(tmp_path / "bad.jsonl"), lm)
    with pytest.raises(ValueError, match="no such file"):
        load_batches(str(tmp_path / "missing.txt"), lm)


def test_saved_inputs_and_errors(tmp_path):
    from safetensors.torch import save_file

    dit = load_model("tiny-dit", layers=1)
    with pytest.raises(ValueError, match="tokenizer"):
        (tmp_path / "p.txt").write_text("x\n")
        load_batches(str(tmp_path / "p.txt"), dit)
    x = torch.randn(1, 8, 16)
    save_file({"0": x, "1.latents": x * 2}, str(tmp_path / "in.safetensors"))
    calls = load_batches(str(tmp_path / "in.safetensors"), dit)
    assert calls[0][0][0].dtype == torch.bfloat16 and torch.equal(calls[1][1]["latents"], (x * 2).bfloat16())
    save_file({"first": x}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="'<i>'"):
        load_batches(str(tmp_path / "bad.safetensors"), dit)
    with pytest.raises(ValueError, match="not a built-in model"):
        load_model(str(tmp_path / "nope"))


def test_state_dict_with_factory(tmp_path):
    from safetensors.torch import save_file

    from omni_npu_quant.models import build_tiny

    ref = build_tiny("dit", seed=3, dtype=torch.float32, blocks=2)
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    inputs = tmp_path / "in.safetensors"
    save_file({str(i): torch.randn(1, 32, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)},
              str(inputs))
    out = tmp_path / "ck"
    kw = dict(model=str(tmp_path / "model.safetensors"), factory="omni_npu_quant.models.tiny:TinyDiT", dtype="bf16")
    with pytest.raises(ValueError, match="--calib FILE.safetensors"):
        run_calib(out, **kw, **DIT1)
    with pytest.raises(ValueError, match="module:function"):
        run_calib(out, **{**kw, "factory": "nocolon"}, **DIT1)
    rep = run_calib(out, calib=str(inputs), **kw, **DIT1)
    assert rep["data"]["source"] == "in.safetensors"
    ck = load_checkpoint(out)
    assert ck.description["blocks.0.attn.to_q.div.mul_scale"] == "FLOAT"
    assert ck.float_tensors["proj_in.weight"].dtype == torch.bfloat16


def test_transformers_llama_dir(tmp_path):
    src = tmp_path / "hf"
    make_hf_llama(src)
    (tmp_path / "prompts.txt").write_text("The quick brown fox\nhello world, hello fox\n")
    out = tmp_path / "ck"
    rep = run_calib(out, model=str(src), calib=str(tmp_path / "prompts.txt"), alphas=(0.5,), clamps=(None,))
    assert rep["model"]["kind"] == "transformers"
    assert {k["name"] for k in rep["kept_float"]} == {"lm_head"}
    assert (out / "tokenizer.json").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["hidden_size"] == 512
    ck = load_checkpoint(out)
    assert len(ck.layers) == 7
    transformers = pytest.importorskip("transformers")
    ref = transformers.LlamaForCausalLM.from_pretrained(str(src)).to(torch.bfloat16).eval()
    q = load_quantized(transformers.LlamaForCausalLM.from_pretrained(str(src)).to(torch.bfloat16).eval(), out,
                       backend="reference")
    ids = torch.randint(0, ref.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = ref(ids).logits.double(), q(ids).logits.double()
    assert torch.isfinite(b).all()
    assert float((a - b).norm() / a.norm()) < 0.5


def test_cli_default_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["calibrate", "--out", str(out), "--model", "tiny-dit", "--layers", "1", "--alphas", "0.5",
               "--clamps", "none", "--num-samples", "2", "--seq-len", "32", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "W4A4_MXFP4_DUALSCALE layers" in printed and "calibrated" in printed
    assert (out / "quant_model_description.json").exists() and (out / "calibration_report.md").exists()
    assert main(["inspect", str(out)]) == 0  # the inspector validates what we wrote
    assert "validation: OK" in capsys.readouterr().out
    rc = main(["calibrate", "--out", str(tmp_path / "x"), "--model", "tiny-dit", "--layers", "1",
               "--ignored-layers", "blocks.7", "--no-progress"])
    assert rc == 2
    assert "blocks.7" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", "--out", str(tmp_path / "y"), "--clamps", "0.5"])
    with pytest.raises(SystemExit):
        main(["calibrate", "--out", str(tmp_path / "y"), "--scheme", "nope"])


def test_diffusers_transformer_dir(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=32, in_channels=4, num_layers=1,
                                        sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    m.save_pretrained(str(tmp_path / "dit"))
    g = torch.Generator().manual_seed(0)
    save_file({f"{i}.{k}": v for i in range(2) for k, v in
               {"hidden_states": torch.randn(1, 4, 8, 8, generator=g), "timestep": torch.tensor([10 + i]),
                "class_labels": torch.tensor([i])}.items()}, str(tmp_path / "in.safetensors"))
    out = tmp_path / "ck"
    rep = run_calib(out, model=str(tmp_path / "dit"), calib=str(tmp_path / "in.safetensors"), scheme="mxfp8",
                    alphas=(0.5,), clamps=(None,))
    assert rep["model"]["kind"] == "diffusers" and len(rep["layers"]) > 4
    assert rep["model_error"]["calibrated"] <= rep["model_error"]["identity"] * 1.05
    ck = load_checkpoint(out)
    assert ck.description["model_quant_type"] == "W8A8_MXFP8"
    assert json.loads((out / "config.json").read_text())["_class_name"] == "DiTTransformer2DModel"
