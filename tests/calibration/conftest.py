"""Shared calibration runs (session-scoped: each configuration is calibrated once)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni_npu_quant.calibration import CalibOptions, calibrate

# small but real settings: fast on a 2-core CPU, same code path as the defaults
FAST = dict(num_samples=4, seq_len=64, max_rows=128, alphas=(0.3, 0.5, 0.7), clamps=(None, 4.0), progress=False)


def run_calib(out: Path, **kw) -> dict:
    opts = CalibOptions(out=str(out), **{**FAST, **kw})
    return calibrate(opts)


@pytest.fixture(scope="session")
def calib_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calib")


@pytest.fixture(scope="session")
def llama_dual(calib_root):
    """tiny Llama (1 layer), dual-scale: calibrated and mul_scale = 1 (``--no-smooth``)."""
    cal = calib_root / "llama_dual"
    ident = calib_root / "llama_dual_identity"
    rep = run_calib(cal, model="tiny-llama", model_layers=1)
    rep0 = run_calib(ident, model="tiny-llama", model_layers=1, smooth=False, evaluate=False)
    return cal, rep, ident, rep0


@pytest.fixture(scope="session")
def dit_dual(calib_root):
    cal = calib_root / "dit_dual"
    ident = calib_root / "dit_dual_identity"
    rep = run_calib(cal, model="tiny-dit")
    rep0 = run_calib(ident, model="tiny-dit", smooth=False, evaluate=False)
    return cal, rep, ident, rep0


def make_hf_llama(out_dir: Path, *, seed: int = 0, with_tokenizer: bool = True) -> None:
    """A seeded 1-layer transformers LlamaForCausalLM (hidden 512) with a locally trained tokenizer."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    vocab = 256
    if with_tokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        bpe = Tokenizer(models.BPE(unk_token=None))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(["The quick brown fox jumps over the lazy dog."] * 20 + ["hello world"] * 20,
                                trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
        tok.save_pretrained(str(out_dir))
        vocab = len(tok)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                                   torch_dtype="bfloat16")
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # activation outliers, like real models
        ln = model.model.layers[0].input_layernorm.weight
        ln[torch.randperm(512)[:8]] *= 20.0
    model.save_pretrained(str(out_dir), safe_serialization=True)
