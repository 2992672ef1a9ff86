"""``omni-npu-quant trajectory``: the full denoise loop, float vs quantized, judged by the decoded images.

Examples::

    omni-npu-quant trajectory --pipeline PIPE_DIR --schemes mxfp4_dual,w8a8_dynamic \\
        --backends reference,npu-sim:A2,npu-sim:A5,cuda --steps 20 --height 512 --width 512 --out traj
    omni-npu-quant trajectory --small-pipeline flux --steps 2 --out traj          # built-in random pipeline
    omni-npu-quant trajectory --pipeline PIPE_DIR --schemes mxfp4 --search-ignored --target-psnr 25 --out s

Writes ``trajectory.json``, ``trajectory.md`` and ``trajectory.png`` (images side by side and the
per-step error curve) under ``--out``; with ``--search-ignored`` also ``sensitivity.json``,
``sensitivity.md`` and ``quant_config.json`` (the proposed QuantConfig).  ``--fail-on smoke|strict``
exits 1 when a variant misses that tier (thresholds: docs/trajectory.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_BACKENDS = "reference,npu-sim:A2,npu-sim:A5,cuda"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..models.pipelines import PIPELINE_FAMILIES

    src = p.add_argument_group("pipeline and request")
    src.add_argument("--pipeline", metavar="DIR", help="diffusers pipeline directory (model_index.json)")
    src.add_argument("--small-pipeline", choices=PIPELINE_FAMILIES,
                     help="build a small random pipeline (wan: Wan2.2 T2V with two experts; flux: FLUX.1) into "
                          "OUT/pipeline and use it (for trying the tool; its images mean nothing)")
    src.add_argument("--prompt", default="a red cat on the house")
    src.add_argument("--seed", type=int, default=0)
    src.add_argument("--steps", type=int, default=None, help="denoising steps (default 20; 4 for --small-pipeline)")
    src.add_argument("--height", type=int, default=None, help="default 512 (32 for --small-pipeline)")
    src.add_argument("--width", type=int, default=None, help="default 512 (32 for --small-pipeline)")
    src.add_argument("--num-frames", type=int, default=None, help="video pipelines (Wan): frames")
    src.add_argument("--guidance-scale", type=float, default=None)
    src.add_argument("--max-sequence-length", type=int, default=None)
    src.add_argument("--negative-prompt", default=None)
    src.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the stored dtype")
    q = p.add_argument_group("what to compare")
    q.add_argument("--schemes", default=None,
                   help="comma-separated schemes, or 'all' for every registered one (default: the main schemes "
                        "w8a8_dynamic, w8a8_static, mxfp8, mxfp4, mxfp4_dual; with --search-ignored: mxfp4)")
    q.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help=f"comma-separated backends (default {DEFAULT_BACKENDS}; unavailable ones are listed)")
    q.add_argument("--config", metavar="FILE",
                   help="QuantConfig JSON applied to every variant (ignored_layers, num_bf16_fallback_layers, ...; "
                        "e.g. the quant_config.json of --search-ignored); its scheme is replaced by --schemes")
    q.add_argument("--ignored-layers", nargs="*", default=None, metavar="PATTERN",
                   help="layers kept float in every variant (added to --config's)")
    q.add_argument("--num-bf16-fallback-layers", type=int, default=None, metavar="N",
                   help="keep the first N numbered blocks float in every variant (vLLM-Omni's option)")
    s = p.add_argument_group("sensitivity search (--search-ignored)")
    s.add_argument("--search-ignored", action="store_true",
                   help="rank layer groups by trajectory error and propose the smallest ignored_layers found that "
                        "reaches --target-psnr")
    s.add_argument("--target-psnr", type=float, default=25.0, help="psnr_db to reach (default 25, vLLM-Omni's 'good')")
    s.add_argument("--margin-db", type=float, default=0.5, help="search for target + margin (default 0.5 dB)")
    s.add_argument("--groups", choices=("kind", "block", "layer"), default="kind",
                   help="layer groups: module kind across blocks (default), numbered block, or single layer")
    s.add_argument("--search-backend", default=None, help="backend of the search (default: first of --backends)")
    s.add_argument("--holdout-prompt", default=None, help="check the proposal on this prompt too")
    s.add_argument("--holdout-seed", type=int, default=None, help="... and this seed (default seed + 1)")
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="DIR")
    o.add_argument("--no-plot", action="store_true", help="do not write trajectory.png")
    o.add_argument("--fail-on", choices=("smoke", "strict"), help="exit 1 if a variant misses this tier")


def _err(msg: str) -> int:
    print(f"omni-npu-quant trajectory: {msg}", file=sys.stderr)
    return 2


def _base_config(args) -> dict:
    base: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"--config {path}: no such file")
        try:
            base = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {path}: not valid JSON ({e})") from None
        if not isinstance(base, dict):
            raise ValueError(f"--config {path}: must hold a QuantConfig JSON object")
        from ..integrations.torch import QuantConfig

        try:
            QuantConfig.from_dict(dict(base))
        except (TypeError, ValueError) as e:
            raise ValueError(f"--config {path}: {e}") from None
    if args.ignored_layers:
        base["ignored_layers"] = list(base.get("ignored_layers") or []) + list(args.ignored_layers)
    if args.num_bf16_fallback_layers is not None:
        base["num_bf16_fallback_layers"] = args.num_bf16_fallback_layers
    return base


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.loading import ModelLoadError
    from ..parity.trajectory import TrajectoryError, TrajectoryRequest, TrajectoryRunner, run_trajectory, write_report
    from ..schemes.registry import scheme_names

    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    if bool(args.pipeline) == bool(args.small_pipeline):
        return _err("give exactly one of --pipeline DIR or --small-pipeline wan|flux")
    out = Path(args.out)
    small = bool(args.small_pipeline)
    try:
        if small:
            from ..models.pipelines import build_small_pipeline, default_call

            pdir = out / "pipeline"
            if not (pdir / "model_index.json").is_file():
                say(f"building the small random {args.small_pipeline} pipeline in {pdir}")
                build_small_pipeline(args.small_pipeline, pdir, seed=0)
            defaults = default_call(args.small_pipeline)
        else:
            pdir, defaults = Path(args.pipeline), {}
        req = TrajectoryRequest(
            prompt=args.prompt, seed=args.seed, steps=args.steps or (4 if small else 20),
            height=args.height or defaults.get("height", 512), width=args.width or defaults.get("width", 512),
            num_frames=args.num_frames if args.num_frames is not None else defaults.get("num_frames"),
            guidance_scale=args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale"),
            max_sequence_length=args.max_sequence_length if args.max_sequence_length is not None
            else defaults.get("max_sequence_length"), negative_prompt=args.negative_prompt)
        base = _base_config(args)
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if not backends:
            return _err("--backends: give at least one backend")
        if args.schemes and args.schemes.strip() == "all":
            schemes = list(scheme_names())
        elif args.schemes:
            schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
        else:
            schemes = ["mxfp4"] if args.search_ignored else list(scheme_names(main=True))
        dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
        say(f"loading {pdir}")
        runner = TrajectoryRunner(pdir, req, dtype=dtype)
        rep = run_trajectory(runner, req, schemes=schemes, backends=backends, base_config=base, progress=say)
    except (TrajectoryError, ModelLoadError, ValueError, KeyError) as e:
        return _err(str(e).strip("'\""))
    for m in write_report(rep, out, plot=not args.no_plot):
        say(m)
    say(f"wrote {out}/trajectory.json, trajectory.md" + ("" if args.no_plot else ", trajectory.png"))
    rc = 0
    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    if not ok:
        say("no variant ran (every backend unavailable or every scheme unsupported)")
        rc = 1
    if args.fail_on and any(not r["verdict"][args.fail_on]["pass"] for r in ok):
        rc = 1
    if args.search_ignored:
        rc = max(rc, _search(args, runner, req, schemes, backends, base, out, say))
    return rc


def _search(args, runner, req, schemes, backends, base, out: Path, say) -> int:
    from ..parity import sensitivity as S
    from ..parity.backends import resolve_backend
    from ..parity.report import _clean
    from ..parity.trajectory import TrajectoryError, TrajectoryRequest

    backend = args.search_backend or backends[0]
    st = resolve_backend(backend)
    if not st.available:
        return _err(f"--search-backend {backend}: {st.reason}")
    try:
        result = S.search_ignored(runner, scheme=schemes[0], backend=backend, target_psnr=args.target_psnr,
                                  margin_db=args.margin_db, groups=args.groups, base_config=base,
                                  device=str(st.device), progress=say)
        if args.holdout_prompt or args.holdout_seed is not None:
            hreq = TrajectoryRequest(**{**req.__dict__, "prompt": args.holdout_prompt or req.prompt,
                                        "seed": args.holdout_seed if args.holdout_seed is not None else req.seed + 1})
            result["holdout"] = S.check_holdout(runner, result, hreq, device=str(st.device))
    except (TrajectoryError, ValueError) as e:
        return _err(str(e))
    (out / "sensitivity.json").write_text(json.dumps(_clean(result), indent=2, allow_nan=False), encoding="utf-8")
    (out / "sensitivity.md").write_text(S.to_markdown(result), encoding="utf-8")
    (out / "quant_config.json").write_text(json.dumps(result["config"], indent=2), encoding="utf-8")
    say(f"proposed ignored_layers {result['ignored_layers']}: {result['final_psnr_db']:.2f} dB "
        f"(all quantized {result['baseline_psnr_db']:.2f} dB); wrote {out}/quant_config.json, sensitivity.json, "
        f"sensitivity.md")
    if "holdout" in result and not result["holdout"]["meets_target"]:
        say(f"held-out request: {result['holdout']['psnr_db']:.2f} dB < target {args.target_psnr}")
        return 1
    return 0
