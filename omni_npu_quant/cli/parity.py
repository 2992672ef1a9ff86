"""``omni-npu-quant parity``: compare backends layer by layer and end to end on the same inputs.

Examples::

    omni-npu-quant parity --out parity_out                      # tiny-llama, mxfp4, every backend here
    omni-npu-quant parity --model tiny-dit --scheme mxfp4_dual --backends reference,npu-sim:A5 --out o
    omni-npu-quant parity --checkpoint CKPT_DIR --backends reference,npu-sim:A2,cuda --fail-on strict --out o
    omni-npu-quant parity --checkpoint svdq-int4.safetensors --backends reference,npu-sim:A2,npu-sim:A5 --out o

Writes ``parity.json``, ``parity.md`` and ``parity.png`` under ``--out``; ``--fail-on smoke|strict``
exits 1 when that tier's thresholds (docs/parity.md) are not met.
"""
from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..parity.backends import DEFAULT_BACKENDS

    src = p.add_argument_group("what to compare")
    src.add_argument("--checkpoint", metavar="DIR|FILE",
                     help="AscendV1 / msModelSlim checkpoint directory, or a nunchaku SVDQuant .safetensors file "
                          "(or a directory holding one; layer-only unless --model names matching linears)")
    src.add_argument("--model", metavar="DIR|tiny-llama|tiny-dit",
                     help="float model: a Hugging Face directory or a built-in (default tiny-llama)")
    src.add_argument("--scheme", help="scheme for --model (name or msModelSlim label; default mxfp4)")
    src.add_argument("--act-round-mode", choices=("rint", "round", "floor"),
                     help="override the MX scheme's activation FP4 rounding")
    src.add_argument("--inputs", metavar="FILE",
                     help=".safetensors input batch (input_ids / latents); pickle files are refused")
    src.add_argument("--layers", metavar="PATTERN",
                     help="comma-separated globs of linear names (re:REGEX, !EXCLUDE); default: the model body")
    src.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="activation / model dtype (default bf16)")
    src.add_argument("--seed", type=int, default=0)
    src.add_argument("--batch", type=int, default=2, help="built-in inputs: batch (default 2)")
    src.add_argument("--seq", type=int, default=64, help="built-in inputs: sequence length (default 64)")
    run = p.add_argument_group("how")
    run.add_argument("--backends", default=DEFAULT_BACKENDS,
                     help=f"comma-separated backends (default {DEFAULT_BACKENDS}); reference is always added")
    run.add_argument("--repeat", type=int, default=3, help="timed repetitions per measurement (median; default 3)")
    run.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs")
    run.add_argument("--no-plot", action="store_true", help="do not write parity.png")
    run.add_argument("--fail-on", choices=("smoke", "strict"), help="exit 1 if this tier's thresholds are not met")
    run.add_argument("--out", required=True, metavar="DIR", help="output directory (parity.json, parity.md, parity.png)")
    # -q/--quiet and --verbose are global flags of omni-npu-quant (cli/main.py)


def run(args: argparse.Namespace) -> int:
    from ..parity import build_source, parse_backend_list, resolve_backends, run_parity, write_report
    from ..schemes.registry import get_scheme

    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    if args.checkpoint and args.scheme:
        print("omni-npu-quant parity: --scheme applies to --model; a checkpoint records its own schemes",
              file=sys.stderr)
        return 2
    try:
        names = parse_backend_list(args.backends)
    except ValueError as e:
        print(f"omni-npu-quant parity: {e}", file=sys.stderr)
        return 2
    opts = {"act_round_mode": args.act_round_mode} if args.act_round_mode else {}
    if opts and args.scheme and not hasattr(get_scheme(args.scheme), "act_round_mode"):
        print("omni-npu-quant parity: --act-round-mode applies to MX schemes only", file=sys.stderr)
        return 2
    statuses = resolve_backends(names)
    for s in statuses:
        say(f"backend {s.name}: " + ("available" + (f" on {s.device}" if s.device.type != "cpu" else "")
                                     if s.available else f"NOT available — {s.reason}"))
    try:
        src = build_source(model=args.model, scheme=args.scheme, checkpoint=args.checkpoint, inputs=args.inputs,
                           layers=args.layers, dtype=DTYPES[args.dtype], seed=args.seed, batch=args.batch,
                           seq=args.seq, scheme_opts=opts)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"omni-npu-quant parity: {e}", file=sys.stderr)
        return 2
    say(f"source: {src.description}; {len(src.layers)} quantized layer(s)")
    from . import _quiet

    n_avail = sum(1 for s in statuses if s.available)
    steps = len(src.layers) * n_avail + (0 if args.no_e2e or src.model is None else n_avail)
    bar = _quiet.progress(total=steps, desc="parity", unit="run")

    def step(what: str) -> None:
        bar.set_postfix_str(what[-40:], refresh=False)
        bar.update(1)
        if _quiet.is_verbose():
            say(f"  done: {what}")

    try:
        rep = run_parity(src, statuses, repeat=args.repeat, end_to_end=not args.no_e2e, log=say, progress=step)
    finally:
        bar.close()
    for m in write_report(rep, args.out, plot=not args.no_plot):
        say(m)
    for tier, v in rep["verdict"].items():
        say(f"{tier}: {'PASS' if v['pass'] else 'FAIL'}" + ("" if v["pass"] else f" — {v['failures'][0]}"))
    say(f"wrote {args.out}/parity.json, parity.md" + ("" if args.no_plot else ", parity.png"))
    if args.fail_on and not rep["verdict"][args.fail_on]["pass"]:
        return 1
    return 0
