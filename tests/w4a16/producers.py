"""Checkpoint producers for the W4A16 tests.

* ``autoround(...)``: the real auto-round 0.16 (on CPU, offline) quantizing a small transformers Llama
  (``LlamaConfig`` at width 128, seeded random weights, saved with ``save_pretrained`` and passed to
  auto-round by path) or a small diffusers DiT; RTN (``iters=0``, ``disable_opt_rtn``) or a short tuned
  run (``iters=2`` on ``dataset=[texts]``).
* ``autoround_dequant(dir, prefix)``: auto-round's *own* dequantized weight of one layer: its torch
  inference ``QuantLinear`` (``auto_round_extension/torch/qlinear_torch_zp.py`` for the GPTQ ``zero - 1``
  packings, ``qlinear_torch.py`` for ``auto_round`` / ``gptqmodel``) loaded with the stored buffers and run
  on the identity matrix.
* ``write_gptq(...)``: a GPTQ checkpoint in the documented format (AutoGPTQ ``qweight``/``qzeros``/``scales``/
  ``g_idx``, v1 ``zero - 1`` or v2), with act-order when asked (what auto-round cannot export).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 4, "Hello world, a tiny calibration corpus for W4A16. " * 3]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def llama_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       tie_word_embeddings=False)


def save_tiny_llama(out: Path, seed: int = 0) -> Path:
    """A float Llama (fp32) with a tokenizer, saved like a hub model."""
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(len(tok))).eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def autoround(src, out: Path, *, fmt: str, tokenizer=None, **kw) -> Path:
    """Run auto-round on ``src`` (a model directory or a module) and return the directory it wrote."""
    from auto_round import AutoRound

    args = dict(bits=4, enable_torch_compile=False, dataset=list(TEXTS), nsamples=2, seqlen=16)
    args.update(kw)
    ar = AutoRound(str(src) if isinstance(src, Path) else src, tokenizer, **args)
    ar.quantize_and_save(str(out), format=fmt)
    hits = [p.parent for p in Path(out).rglob("config.json")]
    if len(hits) != 1:
        raise RuntimeError(f"auto-round wrote {len(hits)} config.json under {out}")
    return hits[0]


def _load(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def quant_config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())["quantization_config"]


def autoround_dequant(d: Path, prefix: str, tensors: dict | None = None) -> torch.Tensor:
    """auto-round's dequantized fp32 (N, K) weight of layer ``prefix`` (its inference QuantLinear)."""
    qc = quant_config(d)
    t = tensors if tensors is not None else _load(d)
    qw, sc = t[prefix + ".qweight"], t[prefix + ".scales"]
    bits = (qc.get("extra_config") or {}).get(prefix, {}).get("bits", qc["bits"])
    k, n = qw.shape[0] * 32 // bits, qw.shape[1]
    if qc.get("quant_method") == "gptq":  # AutoGPTQ: checkpoint_format gptq (zero - 1) or gptq_v2
        v1 = qc.get("checkpoint_format", "gptq") == "gptq"
    else:
        v1 = qc.get("packing_format") == "auto_round:auto_gptq"
    if v1:
        from auto_round_extension.torch.qlinear_torch_zp import QuantLinear
    else:
        from auto_round_extension.torch.qlinear_torch import QuantLinear
    gs = qc["group_size"]
    g_idx = t.get(prefix + ".g_idx")
    # a sequential g_idx means no act-order; auto-round's g_idx path also slices scales by K, so it is
    # only right for square layers (N == K): use it only when needed
    has_g = g_idx is not None and not torch.equal(g_idx.long(), torch.arange(k) // (k if gs == -1 else gs))
    ql = QuantLinear(bits, gs, k, n, False, g_idx=has_g)
    ql.qweight = qw.clone()
    ql.qzeros = t[prefix + ".qzeros"].clone()
    ql.scales = sc.clone()
    if has_g:
        if n != k:
            raise ValueError(f"{prefix}: auto-round's act-order dequantization needs N == K, got ({n}, {k})")
        ql.g_idx = g_idx.clone()
    ql.post_init()
    with torch.no_grad():
        return ql(torch.eye(k, dtype=torch.float32)).t().contiguous()  # x = I: row k of the output is W[:, k]


# ---- the documented GPTQ format ----------------------------------------------------------------
def write_gptq(out: Path, layers: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
               *, group_size: int, sym: bool, desc_act: bool = False, v1: bool = True, floats: dict | None = None,
               config_extra: dict | None = None, method: str = "gptq") -> Path:
    """``layers``: prefix -> (u (N, K) unsigned int4 values, zero (N, G) unsigned, scale (N, G) fp16, g_idx or None).
    Writes ``model.safetensors`` + ``config.json`` (quant_method gptq, checkpoint_format gptq / gptq_v2)."""
    from omni_npu_quant.checkpoint.gptq import pack_gptq_qweight, pack_gptq_qzeros
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    t = dict(floats or {})
    for p, (u, z, s, g) in layers.items():
        t[p + ".qweight"] = pack_gptq_qweight(u.t().contiguous())
        zz = (z - 1).clamp(min=0) if v1 else z
        t[p + ".qzeros"] = pack_gptq_qzeros(zz.t().contiguous())
        t[p + ".scales"] = s.t().contiguous()
        if g is not None:
            t[p + ".g_idx"] = g.to(torch.int32)
    save_file(t, str(out / "model.safetensors"))
    qc = {"quant_method": method, "bits": 4, "group_size": group_size, "sym": sym, "desc_act": desc_act}
    if method == "gptq":
        qc["checkpoint_format"] = "gptq" if v1 else "gptq_v2"
    qc.update(config_extra or {})
    (out / "config.json").write_text(json.dumps({"model_type": "none", "quantization_config": qc}))
    return out


def random_gptq_layer(n: int, k: int, gs: int, *, sym: bool, act_order: bool, gen: torch.Generator):
    """(u, zero, scale, g_idx, exact fp32 weight in x's channel order) of a random GPTQ layer."""
    g = k // gs
    u = torch.randint(0, 16, (n, k), generator=gen)
    zero = torch.full((n, g), 8) if sym else torch.randint(1, 16, (n, g), generator=gen)
    scale = (torch.rand(n, g, generator=gen) * 0.02 + 0.001).to(torch.float16)
    if act_order:
        perm = torch.randperm(k, generator=gen)
        g_idx = torch.empty(k, dtype=torch.int64)
        g_idx[perm] = torch.arange(k) // gs  # GPTQ desc_act: groups follow the activation order
    else:
        g_idx = torch.arange(k) // gs
    w = (u.float() - zero.float()[:, g_idx]) * scale.float()[:, g_idx]
    return u, zero, scale, (g_idx if act_order else None), w


def env_offline() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


# ---- one subprocess makes every auto-round checkpoint (keeps auto-round out of the pytest process) ----
VARIANTS = {  # tag -> (source, output format, auto-round arguments)
    "rtn_sym_g32": ("llama", "auto_round", dict(group_size=32, sym=True, iters=0, disable_opt_rtn=True)),
    # asymmetric int4 in format "auto_round" goes to AWQ packing unless some layer is configured with
    # other bits; lm_head (skipped: its 292 rows are not a multiple of 32) carries that config here
    "rtn_asym_g64_native": ("llama", "auto_round", dict(group_size=64, sym=False, iters=0, disable_opt_rtn=True,
                                                        layer_config={"lm_head": {"bits": 8}})),
    "rtn_asym_g128_gptqmodel": ("llama", "auto_round:gptqmodel", dict(group_size=128, sym=False, iters=0,
                                                                      disable_opt_rtn=True)),
    "gptq_export_pc": ("llama", "auto_gptq", dict(group_size=-1, sym=True, iters=0, disable_opt_rtn=True)),
    "tuned_sym_g128": ("llama", "auto_round", dict(group_size=128, sym=True, iters=2, lr=5e-3)),
    "dit_rtn_g64": ("dit", "auto_round", dict(group_size=64, sym=True, iters=0, disable_opt_rtn=True)),
}


def produce_all(root: Path, tags=None) -> dict:
    """Run auto-round for every variant under ``root``; write ``index.json`` {tag: dir} and, per output,
    ``oracle.safetensors`` {prefix: auto-round's dequantized fp32 weight}."""
    root = Path(root)
    llama = save_tiny_llama(root / "float_llama")
    index = {"float_llama": str(llama)}
    for tag in tags or VARIANTS:
        src, fmt, kw = VARIANTS[tag]
        if src == "llama":
            d = autoround(llama, root / tag, fmt=fmt, **kw)
        else:
            from omni_npu_quant.models.dit import build_small_dit

            dit = build_small_dit("WanTransformer3DModel", seed=7, dtype=torch.float32, num_layers=1)
            d = autoround(dit, root / tag, fmt=fmt, tokenizer=tiny_tokenizer(), **kw)  # RTN: the tokenizer is unused
        t = _load(d)
        prefixes = sorted(k[: -len(".qweight")] for k in t if k.endswith(".qweight"))
        save_file({p: autoround_dequant(d, p, t).contiguous() for p in prefixes}, str(d / "oracle.safetensors"))
        index[tag] = str(d)
    # act-order (desc_act) in the documented GPTQ format: auto-round does not export it, its torch
    # QuantLinear dequantizes it (square layers, see autoround_dequant)
    gen = torch.Generator().manual_seed(11)
    layers, exact = {}, {}
    for i, (sym, v1) in enumerate(((True, True), (False, True), (False, False))):
        u, z, sc, g, w = random_gptq_layer(128, 128, 32, sym=sym, act_order=True, gen=gen)
        layers[f"blk.{i}.proj"] = (u, z, sc, g)
        exact[f"blk.{i}.proj"] = w
    for v1 in (True, False):
        d = write_gptq(root / f"actorder_v{1 if v1 else 2}", layers,
                       group_size=32, sym=False, desc_act=True, v1=v1)
        t = _load(d)
        save_file({p: autoround_dequant(d, p, t).contiguous() for p in sorted(k[:-8] for k in t if k.endswith(".qweight"))},
                  str(d / "oracle.safetensors"))
        save_file({k: v.contiguous() for k, v in exact.items()}, str(d / "exact.safetensors"))
        index[f"actorder_v{1 if v1 else 2}"] = str(d)
    (root / "index.json").write_text(json.dumps(index, indent=1))
    return index


if __name__ == "__main__":
    import sys

    produce_all(Path(sys.argv[1]), sys.argv[2:] or None)
