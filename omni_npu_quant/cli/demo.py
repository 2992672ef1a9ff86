"""``omni-npu-quant demo``: quantize a built-in tiny model with every scheme (reference backend) and
print one row per scheme: weight bytes vs bf16, mean per-layer output error, end-to-end error and
cosine vs the float model, and time.

The layer replacement here is deliberately minimal and private to the demo (a wrapper module that
runs the reference backend); the real runtime is ``omni_npu_quant.integrations.torch``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from ..backends.reference import ReferenceBackend
from ..models.tiny import build_tiny, tiny_inputs
from ..schemes import MAIN_SCHEMES, get_scheme

EXTRA_SCHEMES = ("w4a8_mxfp", "w8a16")
# kept in float, as serving stacks do: the output head and the DiT patch in/out projections
# (top-level module names; the DiT blocks' own ff.proj_in/proj_out are quantized)
KEEP_FLOAT = ("lm_head", "proj_in", "proj_out")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("llama", "dit"), default="llama", help="built-in tiny model (default llama)")
    p.add_argument("--schemes", nargs="+", default=None,
                   help=f"schemes to run (default: {' '.join(MAIN_SCHEMES + EXTRA_SCHEMES)})")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON to FILE")
    p.add_argument("--seed", type=int, default=0, help="model seed (inputs use seed + 1)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)


class _DemoQuantLinear(nn.Module):
    """A linear whose forward is the reference backend's ``apply`` on a prepared tensor set."""

    def __init__(self, scheme, tensors, act_dtype, where: str):
        super().__init__()
        self.backend = ReferenceBackend()
        self.prepared = self.backend.prepare(scheme, tensors, act_dtype, where=where)
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


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def run_demo(model_kind: str = "llama", schemes=None, *, seed: int = 0, batch: int = 2, seq: int = 64) -> dict:
    dtype = torch.bfloat16
    model = build_tiny(model_kind, seed=seed, dtype=dtype)
    inputs = tiny_inputs(model_kind, batch=batch, seq=seq, seed=seed + 1, dtype=dtype, model=model)
    names = list(_linears(model))
    y_float, rec = _capture(model, names, inputs)
    bf16_bytes = sum(m.weight.numel() * 2 for m in _linears(model).values())
    rows = []
    for sname in schemes or (MAIN_SCHEMES + EXTRA_SCHEMES):
        scheme = get_scheme(sname)
        t0 = time.perf_counter()
        qmodel = copy.deepcopy(model)
        stored, skipped, layer_err = 0, [], []
        for n, lin in _linears(qmodel).items():
            k = lin.in_features
            if sname == "mxfp4_dual" and k % 512:
                skipped.append(n)
                continue
            calib = {"act_min": rec[n]["min"], "act_max": rec[n]["max"]} if sname == "w8a8_static" else {}
            bias = None if lin.bias is None else lin.bias.detach().float()
            tensors = scheme.quantize_weight(lin.weight.detach().float(), bias, **calib)
            q = _DemoQuantLinear(scheme, tensors, dtype, where=n)
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
            "skipped_layers": skipped,
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
    lines = [f"model: tiny {report['model']} ({report['dtype']}, batch {report['batch']} x seq {report['seq']}), "
             f"backend: {report['backend']}; kept in float: {', '.join(report['kept_float'])}", head, "-" * len(head)]
    for r in report["results"]:
        lines.append(f"{r['scheme']:<14}{r['label']:<22}{r['layers']:>7}{r['bytes_vs_bf16']:>11.3f}"
                     f"{r['mean_layer_rel_l2']:>13.4f}{r['e2e_rel_l2']:>11.4f}{r['e2e_cosine']:>10.5f}"
                     f"{r['quantize_s']:>9.2f}{r['forward_s']:>8.2f}")
        if r["skipped_layers"]:
            lines.append(f"  ({r['scheme']}: {len(r['skipped_layers'])} layer(s) with K not a multiple of 512 kept in float)")
    return "\n".join(lines)


def run(args) -> int:
    torch.manual_seed(args.seed)
    report = run_demo(args.model, args.schemes, seed=args.seed, batch=args.batch, seq=args.seq)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0
