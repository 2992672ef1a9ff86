"""``omni-npu-quant quantize``: quantize a model online, print the plan, or write an AscendV1 checkpoint.

Examples::

    omni-npu-quant quantize --model tiny-llama --scheme mxfp4 --ignored-layers lm_head --plan
    omni-npu-quant quantize --model tiny-dit --scheme mxfp4_dual --keep-first-blocks 1 --out ./dit-mxfp4-dual
    omni-npu-quant quantize --model ./Llama-3-8B --scheme w8a8_dynamic --layer-scheme '*.down_proj=float' --out OUT
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..schemes.registry import scheme_names

TINY = {"tiny-llama": "llama", "tiny-dit": "dit"}
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "fp32": "float32",
          "float32": "float32"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="tiny-llama | tiny-dit | a transformers / diffusers model directory | a diffusers pipeline "
                        "directory (model_index.json: every transformer, e.g. Wan2.2's transformer + transformer_2, "
                        "is quantized into OUT/<subfolder>/)")
    p.add_argument("--scheme", default="mxfp4",
                   help=f"default scheme name or msModelSlim label ({', '.join(scheme_names())}, W4A4_MXFP4, ...); "
                        f"'float' quantizes only --layer-scheme layers")
    p.add_argument("--ignored-layers", nargs="*", default=[], metavar="PATTERN",
                   help="layers kept in float: exact name, dot-boundary prefix, glob (*.down_proj) or re:<regex>")
    p.add_argument("--layer-scheme", action="append", default=[], metavar="PATTERN=SCHEME",
                   help="per-layer scheme (repeatable); SCHEME may be 'float'")
    p.add_argument("--keep-first-blocks", type=int, default=0, metavar="N",
                   help="keep the first N numbered blocks (model.layers.0.. / blocks.0..) in float")
    p.add_argument("--num-bf16-fallback-layers", type=int, default=0, metavar="N",
                   help="keep N numbered blocks in float (vLLM-Omni's option); which ones: --bf16-fallback-side")
    p.add_argument("--bf16-fallback-side", default="first", choices=("first", "last", "both"),
                   help="with --num-bf16-fallback-layers: the first N blocks (default, as vLLM-Omni), the last N, "
                        "or both")
    p.add_argument("--no-default-float", action="store_true",
                   help="also quantize the per-architecture float defaults (embedders, modulation, norm_out / "
                        "proj_out, lm_head; docs/diffusion.md)")
    p.add_argument("--scheme-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the default scheme, e.g. act_round_mode=rint (VALUE parsed as JSON if possible)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a QuantConfig JSON (e.g. quant_config.json of `trajectory --search-ignored`) instead of the "
                        "recipe flags; --ignored-layers are added to it, --backend overrides it")
    p.add_argument("--backend", default=None, help="backend name (reference, npu, npu-sim:A5, cuda); default: dispatcher")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="model dtype (default: the stored dtype of a model directory; bf16 for the tiny models)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny models")
    p.add_argument("--plan", action="store_true", help="print which scheme every linear gets and exit (dry run)")
    p.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    p.add_argument("--out", default=None, metavar="DIR", help="write an AscendV1 checkpoint to DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--part-file-size", type=float, default=0, help="shard size in GB for --out (0: one file)")


def _parse_kv(items, what):
    out = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"error: {what} expects KEY=VALUE, got {it!r}")
        k, v = it.rsplit("=", 1) if what == "--layer-scheme" else it.split("=", 1)
        try:
            v = json.loads(v)
        except ValueError:
            pass
        out[k.strip()] = v
    return out


def load_model(spec: str, dtype, seed: int = 0):
    """(model, model_dir or None, kind) for a tiny name or a transformers / diffusers model directory
    (the class comes from its config: ``omni_npu_quant.models.loading``)."""
    if spec in TINY:
        import torch

        from ..models.tiny import build_tiny

        return build_tiny(TINY[spec], seed=seed, dtype=dtype or torch.bfloat16), None, TINY[spec]
    from ..models.loading import ModelLoadError, load_dir

    try:
        ld = load_dir(spec, dtype=dtype)
    except ModelLoadError as e:
        raise SystemExit(f"error: --model {spec}: {e}") from None
    return ld.model, str(ld.path), ld.kind


def _targets(spec: str, dtype, seed: int):
    """[(subfolder, (model, model_dir, kind))]: one entry, or one per transformer of a diffusers pipeline."""
    if spec not in TINY:
        from pathlib import Path

        from ..models.loading import DIFFUSERS_PIPELINE, ModelLoadError, detect, pipeline_transformers

        try:
            if detect(spec) == DIFFUSERS_PIPELINE:
                return [(sub, lambda sub=sub: load_model(str(Path(spec) / sub), dtype, seed))
                        for sub in pipeline_transformers(spec)]
        except ModelLoadError as e:
            raise SystemExit(f"error: --model {spec}: {e}") from None
    return [("", lambda: load_model(spec, dtype, seed))]


def run(args) -> int:
    import torch

    from ..integrations.torch import QuantConfig

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    if args.config:
        recipe = {"--scheme": args.scheme != "mxfp4", "--layer-scheme": bool(args.layer_scheme),
                  "--scheme-option": bool(args.scheme_option), "--keep-first-blocks": bool(args.keep_first_blocks),
                  "--num-bf16-fallback-layers": bool(args.num_bf16_fallback_layers),
                  "--bf16-fallback-side": args.bf16_fallback_side != "first", "--no-default-float": args.no_default_float}
        clash = [k for k, v in recipe.items() if v]
        try:
            if clash:
                raise ValueError(f"--config {args.config}: give the recipe in the file, not also {', '.join(clash)}")
            import json
            from pathlib import Path

            try:
                raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
            except OSError as e:
                raise ValueError(f"--config {args.config}: cannot read it ({e.strerror})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"--config {args.config}: not valid JSON ({e})") from None
            if not isinstance(raw, dict):
                raise ValueError(f"--config {args.config}: must hold a QuantConfig JSON object")
            raw["ignored_layers"] = list(raw.get("ignored_layers") or []) + list(args.ignored_layers)
            if args.backend:
                raw["backend"] = args.backend
            try:
                cfg = QuantConfig.from_dict(raw)
            except TypeError as e:
                raise ValueError(f"--config {args.config}: {e}") from None
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        cfg = cfg if args.config else QuantConfig(scheme=args.scheme, ignored_layers=list(args.ignored_layers),
                          layer_schemes=_parse_kv(args.layer_scheme, "--layer-scheme"), backend=args.backend,
                          scheme_options=_parse_kv(args.scheme_option, "--scheme-option"),
                          keep_first_blocks=args.keep_first_blocks, apply_defaults=not args.no_default_float,
                          num_bf16_fallback_layers=args.num_bf16_fallback_layers,
                          bf16_fallback_side=args.bf16_fallback_side)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    targets = _targets(args.model, dtype, args.seed)
    if args.out and len(targets) > 1:
        from pathlib import Path

        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            print(f"error: --out {out} exists and is not empty; pass --overwrite to replace it", file=sys.stderr)
            return 2
    for sub, build in targets:
        if sub:
            print(f"== {sub}")
        rc = _quantize_one(args, cfg, *build(), out=None if not args.out else
                           (args.out if not sub else f"{args.out}/{sub}"))
        if rc:
            return rc
    if args.out and len(targets) > 1 and not args.plan:
        import shutil
        from pathlib import Path

        shutil.copyfile(Path(args.model) / "model_index.json", Path(args.out) / "model_index.json")
        print(f"wrote {args.out}: pipeline layout ({', '.join(s for s, _ in targets)}) + model_index.json")
    return 0


def _quantize_one(args, cfg, model, model_dir, kind, *, out) -> int:
    import torch

    from ..integrations.selection import SelectionError
    from ..integrations.torch import format_plan, plan_quantization, quantize_, quantized_tensor_sets
    from ..integrations.torch.module import quantized_state_keys

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.bfloat16)
    try:
        plan = plan_quantization(model, cfg)
    except (SelectionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.plan:
        if args.json:
            print(json.dumps([p.__dict__ for p in plan], indent=1))
        else:
            print(format_plan(plan))
            _print_plan_notes(args, plan, out)
        return 0
    calib = None
    if kind in ("llama", "dit"):
        from ..models.tiny import tiny_inputs

        calib = tiny_inputs(kind, model=model, batch=2, seq=32, dtype=dtype)
    if calib is None and _calibration_needed(plan):
        print(f"error: {_calibrate_hint(args, plan, out)}", file=sys.stderr)
        return 2
    try:
        with torch.no_grad():
            from ._quiet import progress

            quantize_(model, cfg, calib_data=calib, progress=lambda it: progress(it, desc="quantize", unit="layer"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    _print_plan_notes(args, plan, out, calibrated=calib is not None)
    if out:
        from ..checkpoint import write_ascendv1

        layers = quantized_tensor_sets(model)
        qkeys = quantized_state_keys(model)
        float_tensors = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in qkeys}
        config = getattr(model, "config", None)
        if config is not None and not isinstance(config, dict):
            config = config.to_dict()
        elif isinstance(config, dict):
            config = dict(config)
        path = write_ascendv1(out, layers, float_tensors, config=None if model_dir else config,
                              part_file_size=args.part_file_size, copy_from=model_dir, overwrite=args.overwrite)
        print(f"wrote {path} ({len(layers)} quantized layers, {len(float_tensors)} float tensors)")
    return 0


def _calibration_needed(plan) -> list:
    """The planned layers whose scheme needs activation ranges (the scheme says so: ``needs_calibration``)."""
    from ..schemes import get_scheme

    return [p for p in plan if p.quantized and getattr(get_scheme(p.scheme, **p.options), "needs_calibration", False)]


def _calibrate_hint(args, plan, out) -> str:
    import shlex

    need = _calibration_needed(plan)
    scheme = need[0].scheme
    dest = out or f"{Path(str(args.model)).name or 'model'}-{scheme}"
    return (f"{scheme} needs calibration (static activation ranges) for {len(need)} layer(s), e.g. {need[0].name}; "
            f"quantize has no calibration data for --model {args.model}. Use:\n"
            f"  omni-npu-quant calibrate --model {shlex.quote(str(args.model))} --scheme {scheme} "
            f"--out {shlex.quote(str(dest))}\n"
            f"or an online scheme ({', '.join(scheme_names(online=True))})")


def _print_plan_notes(args, plan, out, *, calibrated: bool = False) -> None:
    """After the plan: every layer kept float, grouped by its reason, and the calibration hint."""
    from collections import Counter

    kept = Counter(p.reason.removeprefix("kept float: ") for p in plan if not p.quantized)
    for reason, n in kept.most_common():
        print(f"kept float: {n} layer(s): {reason}")
    if _calibration_needed(plan) and not calibrated and args.model not in TINY:
        print(f"note: {_calibrate_hint(args, plan, out)}")
