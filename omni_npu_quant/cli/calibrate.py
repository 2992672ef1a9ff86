"""``omni-npu-quant calibrate``: offline calibration -> msModelSlim AscendV1 checkpoint + report.

With no arguments besides ``--out`` it calibrates the built-in tiny Llama for dual-scale MXFP4 on
built-in data.  See ``docs/calibration.md``.
"""
from __future__ import annotations

import argparse
import sys

from ..schemes.registry import MAIN_SCHEMES, SCHEMES


def _floats(text: str) -> tuple:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _clamps(text: str) -> tuple:
    out = []
    for x in text.split(","):
        x = x.strip().lower()
        if not x:
            continue
        if x in ("none", "off"):
            out.append(None)
        else:
            try:
                v = float(x)
            except ValueError:
                raise argparse.ArgumentTypeError(f"--clamps: expected numbers or 'none', got {x!r}") from None
            if v <= 1.0:
                raise argparse.ArgumentTypeError(f"--clamps: a clamp must be > 1 (s is kept in [1/c, c]), got {v}")
            out.append(v)
    return tuple(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..calibration.pipeline import DEFAULT_ALPHAS, DEFAULT_CLAMPS

    p.add_argument("--model", default=None,
                   help="tiny-llama | tiny-dit | a transformers / diffusers model directory | a safetensors state dict "
                        "(file or directory) together with --factory (default: tiny-llama)")
    pipe = p.add_argument_group("calibrate a diffusers pipeline from its own denoise loop (instead of --model)")
    pipe.add_argument("--pipeline", default=None, metavar="DIR",
                      help="diffusers pipeline directory (model_index.json); every transformer (Wan2.2: transformer "
                           "+ transformer_2) is calibrated into OUT/<subfolder>/ from inputs captured while the "
                           "pipeline runs --prompts (docs/diffusion.md)")
    pipe.add_argument("--prompts", default=None, metavar="FILE", help=".txt (one per line) or .jsonl prompts")
    pipe.add_argument("--steps", type=int, default=8, help="denoising steps per prompt (default 8)")
    pipe.add_argument("--height", type=int, default=None, help="image / video height in pixels")
    pipe.add_argument("--width", type=int, default=None, help="image / video width in pixels")
    pipe.add_argument("--num-frames", type=int, default=None, help="video frames (Wan)")
    pipe.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    pipe.add_argument("--negative-prompt", default=None, help="negative prompt (CFG)")
    pipe.add_argument("--max-sequence-length", type=int, default=None, help="text tokens per prompt")
    p.add_argument("--factory", default=None, metavar="MODULE:FUNCTION",
                   help="zero-argument callable building the nn.Module for a plain safetensors state dict")
    p.add_argument("--scheme", default="mxfp4_dual", choices=sorted(set(MAIN_SCHEMES) | set(SCHEMES)),
                   help="target scheme (default: mxfp4_dual)")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="prompts (.txt one per line, .jsonl with 'text'/'prompt') or saved inputs (.safetensors, keys "
                        "'<i>' or '<i>.<kwarg>'); default: built-in data")
    p.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    p.add_argument("--ignored-layers", nargs="*", default=[], metavar="PATTERN",
                   help="layers kept float: exact name / dotted prefix, glob (*.down_proj) or re:<regex>")
    p.add_argument("--no-default-ignores", action="store_true", help="also quantize lm_head (kept float by default)")
    p.add_argument("--float-blocks", type=int, default=0, metavar="N",
                   help="keep the first N numbered blocks (model.layers.i / blocks.i) float")
    p.add_argument("--device", default="cpu", help="torch device for the forward passes and the search (default cpu)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="model / activation dtype "
                   "(default: the model's own)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>.calib-work")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-smooth", action="store_true", help="no mul_scale search (mul_scale = 1; static ranges only)")
    p.add_argument("--fold-smooth-into-norm", nargs="?", const="keep", default=None,
                   choices=("keep", "unsmooth", "refuse"), metavar="keep|unsmooth|refuse",
                   help="msModelSlim's norm-linear fusion: fold each mul_scale into the norm before the layers "
                        "(norm weight and bias x mul_scale) and write them as plain p.* layers, which vllm-ascend "
                        "loads; only where that norm's output feeds nothing but those layers and they share one "
                        "mul_scale. Layers that cannot be folded (e.g. o_proj, down_proj) keep the non-fusion wrapper "
                        "with a warning ('keep', the default), are quantized without smoothing ('unsmooth': the "
                        "whole checkpoint is plain), or stop the run before writing ('refuse')")
    p.add_argument("--alphas", type=_floats, default=DEFAULT_ALPHAS, metavar="A,B,...",
                   help=f"smoothing exponents to try (default {','.join(map(str, DEFAULT_ALPHAS))})")
    p.add_argument("--clamps", type=_clamps, default=DEFAULT_CLAMPS, metavar="C,...",
                   help="migration clamps to try, s in [1/c, c] ('none' = unclamped; default none,4)")
    p.add_argument("--scale-min", type=float, default=1e-5, help="floor of the smoothing factor s (msModelSlim 1e-5)")
    p.add_argument("--max-rows", type=int, default=512, help="sampled activation rows kept per input group")
    p.add_argument("--num-samples", type=int, default=8,
                   help="calibration prompts / input calls used (--pipeline: captured calls kept per transformer)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per prompt (truncation) / built-in sequence length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None, help="number of layers / blocks of a built-in tiny model")
    p.add_argument("--no-eval", action="store_true", help="skip the model-level error measurement")
    p.add_argument("--part-file-size", type=float, default=0, help="shard size in GB (0: one file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..calibration import CalibOptions, calibrate
    from ..calibration.report import REPORT_MD

    if args.pipeline:
        return _run_pipeline(args)
    if args.prompts:
        print("omni-npu-quant calibrate: error: --prompts goes with --pipeline; for --model use --calib FILE",
              file=sys.stderr)
        return 2
    opts = CalibOptions(
        out=args.out, model=args.model or "tiny-llama", scheme=args.scheme, calib=args.calib, factory=args.factory,
        dtype=args.dtype,
        device=args.device, ignored_layers=list(args.ignored_layers or []), default_ignores=not args.no_default_ignores,
        float_blocks=args.float_blocks, smooth=not args.no_smooth, alphas=args.alphas, clamps=args.clamps,
        scale_min=args.scale_min, max_rows=args.max_rows, num_samples=args.num_samples, seq_len=args.seq_len,
        seed=args.seed, model_layers=args.layers, evaluate=not args.no_eval, part_file_size=args.part_file_size,
        resume=args.resume, overwrite=args.overwrite, progress=_progress(args), fold_smooth=args.fold_smooth_into_norm)
    try:
        rep = calibrate(opts)
    except (ValueError, OSError) as e:
        print(f"omni-npu-quant calibrate: error: {e}", file=sys.stderr)
        return 2
    n_smooth = sum(1 for r in rep["layers"] if r["mul_scale"])
    print(f"wrote {args.out}: {len(rep['layers'])} {rep['label']} layers ({n_smooth} with mul_scale), "
          f"{len(rep['kept_float'])} kept float; report {REPORT_MD}")
    fold = rep.get("fold_smooth_into_norm")
    if fold is not None:
        n = sum(len(v) for v in fold["folded"].values())
        print(f"folded mul_scale into {len(fold['folded'])} norm(s): {n} layer(s) written plain, "
              f"{len(fold['kept'])} kept the non-fusion wrapper")
    me = rep.get("model_error")
    if me:
        print(f"model output rel-L2 vs float: mul_scale=1 {me['identity']:.4f} -> calibrated {me['calibrated']:.4f}")
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    from ..calibration import CalibOptions
    from ..calibration.capture import calibrate_pipeline, read_prompts

    bad = [f for f, v in (("--model", args.model), ("--calib", args.calib), ("--factory", args.factory)) if v]
    if bad:
        print(f"omni-npu-quant calibrate: error: --pipeline takes its inputs from the denoise loop; drop {bad}",
              file=sys.stderr)
        return 2
    missing = [f for f, v in (("--prompts", args.prompts), ("--height", args.height), ("--width", args.width))
               if v is None]
    if missing:
        print(f"omni-npu-quant calibrate: error: --pipeline needs {', '.join(missing)}", file=sys.stderr)
        return 2
    opts = CalibOptions(
        out=args.out, model="", scheme=args.scheme, dtype=args.dtype, device=args.device,
        ignored_layers=list(args.ignored_layers or []), default_ignores=not args.no_default_ignores,
        float_blocks=args.float_blocks, smooth=not args.no_smooth, alphas=args.alphas, clamps=args.clamps,
        scale_min=args.scale_min, max_rows=args.max_rows, num_samples=args.num_samples, seq_len=args.seq_len,
        seed=args.seed, evaluate=not args.no_eval, part_file_size=args.part_file_size, overwrite=args.overwrite,
        progress=_progress(args), fold_smooth=args.fold_smooth_into_norm)
    try:
        res = calibrate_pipeline(opts, pipeline=args.pipeline, prompts=read_prompts(args.prompts), steps=args.steps,
                                 height=args.height, width=args.width, num_frames=args.num_frames,
                                 guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt,
                                 max_sequence_length=args.max_sequence_length)
    except (ValueError, OSError) as e:
        print(f"omni-npu-quant calibrate: error: {e}", file=sys.stderr)
        return 2
    for sub, rep in res["transformers"].items():
        cap = res["capture"][sub]
        n_smooth = sum(1 for r in rep["layers"] if r["mul_scale"])
        line = (f"wrote {args.out}/{sub}: {len(rep['layers'])} {rep['label']} layers ({n_smooth} with mul_scale), "
                f"{len(rep['kept_float'])} kept float; {cap['kept']} of {cap['calls_seen']} captured calls")
        me = rep.get("model_error")
        if me:
            line += f"; output rel-L2 mul_scale=1 {me['identity']:.4f} -> calibrated {me['calibrated']:.4f}"
        print(line)
    print(f"wrote {args.out}/model_index.json (pipeline layout, docs/diffusion.md)")
    return 0


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and not with --no-progress or the global -q/--quiet."""
    from ._quiet import progress_enabled

    return not args.no_progress and progress_enabled()
