"""Generate genuine msModelSlim 26.1.0 checkpoints on CPU (test-time only; msModelSlim is never vendored).

Recipe: ``msmodelslim_format.md`` section 7 (tiny seeded Llama, locally trained tokenizer, YAML config,
in-process ``nq.main``).  Each call takes ~5-10 s on a small CPU.
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import torch

INSTALL_HINT = ("msmodelslim is required for these tests: "
                "pip install torch==2.13.0 && pip install msmodelslim==26.1.0 transformers")

# qconfig per scheme (act, weight), as YAML flow mappings
QCONFIGS = {
    "w8a8": ("{scope: per_tensor, dtype: int8, symmetric: false, method: minmax}",
             "{scope: per_channel, dtype: int8, symmetric: true, method: minmax}"),
    "w8a8_dynamic": ("{scope: per_token, dtype: int8, symmetric: true, method: minmax}",
                     "{scope: per_channel, dtype: int8, symmetric: true, method: minmax}"),
    "w8a8_mxfp8": ("{scope: per_block, dtype: mxfp8, symmetric: true, method: minmax}",
                   "{scope: per_block, dtype: mxfp8, symmetric: true, method: minmax}"),
    "w4a4_mxfp4": ("{scope: per_block, dtype: mxfp4, symmetric: true, method: minmax, ext: {axes: -1}}",
                   "{scope: per_block, dtype: mxfp4, symmetric: true, method: minmax, ext: {axes: -1}}"),
    "w4a8_mxfp": ("{scope: per_block, dtype: mxfp8, symmetric: true, method: minmax}",
                  "{scope: per_block, dtype: mxfp4, symmetric: true, method: minmax, ext: {axes: -1}}"),
    "dualscale": ("{scope: dual_scale, dtype: mxfp4, symmetric: true, method: dualscale, ext: {dual_block_size: 512}}",
                  "{scope: dual_scale, dtype: mxfp4, symmetric: true, method: dualscale, ext: {dual_block_size: 512}}"),
}


def make_tiny_llama(out_dir: Path, dtype=torch.bfloat16, seed: int = 0, hidden: int = 64, inter: int = 128,
                    layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["The quick brown fox jumps over the lazy dog."] * 50 + ["Hello world, a tiny calibration corpus."] * 50,
        trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(dtype).save_pretrained(out_dir)
    return out_dir


def small_calib(out: Path, lines: int = 4) -> Path:
    """The first ``lines`` samples of the wheel's bundled ``lab_calib/mix_calib.jsonl`` (48 samples take ~35 s
    for a static W8A8 calibration on 2 shared cores; 4 take ~3 s)."""
    import msmodelslim

    src = Path(msmodelslim.__file__).parent / "lab_calib" / "mix_calib.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]), encoding="utf-8")
    return out


def write_config(path: Path, scheme: str, saver: str = "ascendv1_saver", part_file_size: int = 0,
                 pre: str = "", dataset: str = "mix_calib.jsonl") -> Path:
    act, weight = QCONFIGS[scheme]
    save = f"    - type: {saver}\n"
    if saver == "ascendv1_saver":
        save += f"      part_file_size: {part_file_size}\n"
    path.write_text(
        "apiversion: modelslim_v1\nspec:\n  process:\n" + pre +
        f"    - type: linear_quant\n      qconfig:\n        act: {act}\n        weight: {weight}\n"
        "      include: [\"*\"]\n  runner: model_wise\n" f"  dataset: {dataset}\n  save:\n" + save)
    return path


def quantize(model_dir: Path, out_dir: Path, config: Path) -> Path:
    """Run msModelSlim in process; in a fresh subprocess when torch.distributed is already initialized
    in this process (e.g. by the vLLM plugin tests): msModelSlim then switches to its multi-rank saver
    layout (``out/rank_0``) and fails."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import subprocess
        import sys

        code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[4]); import msms_gen; "
                "msms_gen.quantize(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))")
        subprocess.run([sys.executable, "-c", code, str(model_dir), str(out_dir), str(config), str(Path(__file__).parent)],
                       check=True)
        return out_dir
    import msmodelslim.cli.naive_quantization.__main__ as nq

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    nq.main(types.SimpleNamespace(model_type="default", model_path=str(model_dir), save_path=str(out_dir), device="cpu",
                                  quant_type=None, config_path=str(config), trust_remote_code=False, debug=False,
                                  tag=None))
    return out_dir


if __name__ == "__main__":  # manual exploration: python tests/checkpoint/msms_gen.py OUT SCHEME [dtype] [saver]
    import sys

    out = Path(sys.argv[1])
    scheme = sys.argv[2]
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[sys.argv[3] if len(sys.argv) > 3 else "bf16"]
    saver = sys.argv[4] if len(sys.argv) > 4 else "ascendv1_saver"
    hidden = 512 if scheme == "dualscale" else 64
    m = make_tiny_llama(out / "model", dt, hidden=hidden, inter=2 * hidden, layers=1 if hidden == 512 else 2)
    cfg = write_config(out / "cfg.yaml", scheme, saver)
    quantize(m, out / "q", cfg)
