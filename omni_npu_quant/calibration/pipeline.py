"""The offline calibration pipeline: model + data -> statistics -> per-group search -> AscendV1.

Steps (``calibrate``):

1. load the model and the calibration calls (``sources``); decide per ``nn.Linear`` whether it is
   quantized or kept float (``--ignored-layers``, ``--float-blocks``, shape limits of the scheme);
2. collect streaming statistics with hooks (``collect``), persisted in the work directory;
3. for each input-sharing group, search the smoothing under the exact scheme (``smooth``); each
   finished group is persisted in the work directory, so ``resume=True`` continues after an
   interruption without redoing finished groups;
4. optionally measure the model output error with ``mul_scale = 1`` and with the calibrated
   ``mul_scale`` (``evaluate``);
5. write the AscendV1 checkpoint (``omni_npu_quant.checkpoint.write_ascendv1``, atomic, under the
   output's lock) with the calibration report (JSON + Markdown) and the input-sharing groups
   (``shared_input_groups`` in the description).

The work directory is ``<out>.calib-work`` next to ``out``; it is keyed by the recipe hash and
removed after a successful run.  The result is deterministic: the same model, data and options
give byte-identical files (no timestamps, no absolute paths in the output).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..schemes.base import Scheme
from ..schemes.registry import get_scheme
from .collect import GroupStats, collect_stats
from .report import REPORT_JSON, REPORT_MD, render_markdown
from .smooth import Candidate, GroupResult, candidates, quantize_member, search_group
from .sources import DTYPES, LoadedModel, batches_digest, load_batches, load_model

__all__ = ["CalibOptions", "CalibrationInterrupted", "calibrate", "work_dir_for", "PRODUCER", "DEFAULT_ALPHAS",
           "DEFAULT_CLAMPS"]

PRODUCER = "omni_npu_quant.calibrate"
FORMAT_VERSION = 1  # of the work directory and the recipe
DEFAULT_ALPHAS = (0.3, 0.5, 0.7, 0.9)  # 0.9 = msModelSlim iter_smooth default
DEFAULT_CLAMPS = (None, 4.0)
FOLD_MODES = ("keep", "unsmooth", "refuse")  # --fold-smooth-into-norm: what happens to layers that cannot be folded
DEFAULT_IGNORED = ("lm_head",)  # msModelSlim never quantizes lm_head with its default adapter


class CalibrationInterrupted(RuntimeError):
    """Raised by the test hook ``fail_after_groups``; the work directory keeps finished groups."""


@dataclass
class CalibOptions:
    out: str
    model: str = "tiny-llama"
    scheme: str = "mxfp4_dual"
    calib: str | None = None
    factory: str | None = None
    dtype: str | None = None
    device: str = "cpu"
    ignored_layers: list[str] = field(default_factory=list)
    default_ignores: bool = True
    float_blocks: int = 0
    smooth: bool = True
    alphas: tuple = DEFAULT_ALPHAS
    clamps: tuple = DEFAULT_CLAMPS
    scale_min: float = 1e-5
    max_rows: int = 512
    num_samples: int = 8
    seq_len: int = 128
    seed: int = 0
    model_layers: int | None = None  # built-in tiny models only
    evaluate: bool = True
    part_file_size: float = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    fail_after_groups: int | None = None  # test hook: raise after this many newly finished groups
    fold_smooth: str | None = None  # None | "keep" | "refuse": fold mul_scale into the preceding norm (checkpoint.fold)


def work_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.calib-work"


def _version() -> str:
    try:
        from .. import __version__  # type: ignore[attr-defined]

        return str(__version__)
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        return version("omni_npu_quant")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source checkout)
        return "0.1.0"


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True, file=sys.stderr)


# ------------------------------------------------------------------------------------------------
def _plan_layers(model: nn.Module, scheme: Scheme, opts: CalibOptions) -> tuple[list[str], dict[str, str]]:
    """(quantized linear names in module order, {kept-float linear name: reason})."""
    from ..integrations.selection import leading_blocks, match_patterns

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("calibration: the model has no nn.Linear layers")
    kept: dict[str, str] = {}
    if opts.default_ignores:
        for pat, hits in match_patterns(DEFAULT_IGNORED, names, allow_unmatched=True).items():
            for n in hits:
                kept.setdefault(n, f"default ignore {pat!r} (lm_head stays float, as in msModelSlim)")
        from ..models.defaults import default_float_layers  # per-architecture float layers (one table)

        for n, why in default_float_layers(model, names).items():
            kept.setdefault(n, why)
    for pat, hits in match_patterns(opts.ignored_layers, names, what="--ignored-layers").items():
        for n in hits:
            kept.setdefault(n, f"--ignored-layers {pat!r}")
    if opts.float_blocks:
        for n in sorted(leading_blocks(names, opts.float_blocks)):
            kept.setdefault(n, f"--float-blocks {opts.float_blocks} (first blocks stay float)")
    mods = dict(model.named_modules())
    for n in names:
        if n in kept:
            continue
        why = scheme.shape_problem(mods[n].out_features, mods[n].in_features)
        if why:
            kept[n] = why
    return [n for n in names if n not in kept], {n: kept[n] for n in names if n in kept}


def _recipe(opts: CalibOptions, scheme: Scheme, lm: LoadedModel, data_digest: str, quantized: list[str],
            kept: dict[str, str]) -> dict:
    return {
        "format": FORMAT_VERSION,
        "producer": PRODUCER,
        "version": _version(),
        "scheme": scheme.describe(),
        "model": {"kind": lm.kind, "identity": lm.identity, "dtype": str(lm.dtype).replace("torch.", "")},
        "data": {"source": "built-in" if opts.calib in (None, "default") else Path(opts.calib).name,
                 "digest": data_digest, "num_samples": opts.num_samples, "seq_len": opts.seq_len},
        "smooth": {"enabled": opts.smooth, "alphas": [float(a) for a in opts.alphas],
                   "clamps": [None if c is None else float(c) for c in opts.clamps], "scale_min": opts.scale_min,
                   "statistic": "per-input-channel absmax", "objective": "group output rel-L2, exact scheme forward"},
        "max_rows": opts.max_rows,
        "seed": opts.seed,
        "quantized": quantized,
        "kept_float": kept,
    }


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _atomic_save(path: Path, tensors: dict[str, torch.Tensor]):
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_json(path: Path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


class _WorkDir:
    def __init__(self, path: Path, recipe_hash: str, resume: bool):
        self.path = path
        if path.exists():
            marker = path / "recipe.json"
            same = marker.exists() and json.loads(marker.read_text()).get("recipe_hash") == recipe_hash
            if resume and not same:
                raise ValueError(f"--resume: the work directory {path.name} belongs to a different recipe "
                                 f"(model, data or options changed); delete it or run without --resume")
            if not resume:
                shutil.rmtree(path)
        (path / "groups").mkdir(parents=True, exist_ok=True)
        if not (path / "recipe.json").exists():
            _atomic_json(path / "recipe.json", {"recipe_hash": recipe_hash})

    # statistics
    def load_stats(self) -> list[GroupStats] | None:
        meta, data = self.path / "stats.json", self.path / "stats.safetensors"
        if not (meta.exists() and data.exists()):
            return None
        from safetensors.torch import load_file

        sd = load_file(str(data))
        out = []
        for i, g in enumerate(json.loads(meta.read_text())):
            out.append(GroupStats(g["key"], g["members"], g["k"], sd[f"{i}.absmax"], sd[f"{i}.amin"], sd[f"{i}.amax"],
                                  sd[f"{i}.rows"], g["seen"]))
        return out

    def save_stats(self, groups: list[GroupStats]):
        sd = {}
        for i, g in enumerate(groups):
            sd.update({f"{i}.{k}": v for k, v in g.state().items()})
        _atomic_save(self.path / "stats.safetensors", sd)
        _atomic_json(self.path / "stats.json", [{"key": g.key, "members": g.members, "k": g.k, "seen": g.seen}
                                                for g in groups])

    # finished groups
    def load_group(self, i: int) -> GroupResult | None:
        meta, data = self.path / "groups" / f"{i:05d}.json", self.path / "groups" / f"{i:05d}.safetensors"
        if not (meta.exists() and data.exists()):
            return None
        from safetensors.torch import load_file

        m = json.loads(meta.read_text())
        sd = load_file(str(data))
        tensors: dict[str, dict] = {n: {} for n in m["members"]}
        for key, t in sd.items():
            n, _, suffix = key.rpartition("::")
            tensors[n][suffix] = t
        return GroupResult(m["key"], m["members"], Candidate(m["alpha"], m["clamp"]), m["err_before"], m["err_after"],
                           m["group_before"], m["group_after"], tensors, [tuple(s) for s in m["scores"]])

    def save_group(self, i: int, r: GroupResult):
        _atomic_save(self.path / "groups" / f"{i:05d}.safetensors",
                     {f"{n}::{s}": t for n, ts in r.tensors.items() for s, t in ts.items()})
        _atomic_json(self.path / "groups" / f"{i:05d}.json", {
            "key": r.key, "members": r.members, "alpha": r.chosen.alpha, "clamp": r.chosen.clamp,
            "err_before": r.err_before, "err_after": r.err_after, "group_before": r.group_before,
            "group_after": r.group_after, "scores": r.scores})


def _float_tensors(model: nn.Module, quantized: list[str]) -> dict[str, torch.Tensor]:
    skip = {f"{n}.{s}" for n in quantized for s in ("weight", "bias")}
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        if k in skip:
            continue
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if key is not None and key in seen:
            v = v.clone()  # tied weights: safetensors refuses shared storage
        elif key is not None:
            seen.add(key)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------
def calibrate(opts: CalibOptions) -> dict:
    """Run the whole calibration; returns the report (also written next to the checkpoint).

    The output's lock (``checkpoint.writer.output_lock``) is held for the whole run, work directory
    included: a concurrent run on the same ``out`` fails at once naming this one's pid."""
    from ..checkpoint.writer import output_lock

    with output_lock(opts.out):
        return _calibrate_locked(opts)


def _calibrate_locked(opts: CalibOptions) -> dict:
    from ..checkpoint import write_ascendv1

    out = Path(opts.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.overwrite:
        raise ValueError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    scheme = get_scheme(opts.scheme)
    dtype = DTYPES[opts.dtype] if opts.dtype else None
    if opts.dtype and dtype is None:
        raise ValueError(f"--dtype {opts.dtype!r}: use bf16, fp16 or fp32")
    if opts.max_rows < 1:
        raise ValueError("--max-rows must be >= 1")
    if opts.smooth and not opts.alphas:
        raise ValueError("--alphas: give at least one smoothing exponent, or --no-smooth")
    lm = load_model(opts.model, factory=opts.factory, dtype=dtype, seed=opts.seed, layers=opts.model_layers)
    model = lm.model.to(opts.device)
    act_dtype = lm.dtype
    if act_dtype not in (torch.bfloat16, torch.float16) and not scheme.weight_only:
        print(f"note: {scheme.name} activations are bf16/fp16 on the NPU; calibrating with {act_dtype}", file=sys.stderr)
    calls = load_batches(opts.calib, lm, seq_len=opts.seq_len, num_samples=opts.num_samples, seed=opts.seed + 1)
    calls = [(tuple(_to(a, opts.device) for a in args), {k: _to(v, opts.device) for k, v in kw.items()})
             for args, kw in calls]
    quantized, kept = _plan_layers(model, scheme, opts)
    if not quantized:
        raise ValueError("calibration: every linear is kept float; nothing to calibrate")
    recipe = _recipe(opts, scheme, lm, batches_digest(calls), quantized, kept)
    recipe_hash = _hash(recipe)
    work = _WorkDir(work_dir_for(out), recipe_hash, opts.resume)

    # 1. statistics
    groups = work.load_stats() if opts.resume else None
    if groups is None:
        bar = _progress(len(calls), "calibration forward", opts.progress)
        groups = collect_stats(model, calls, quantized, max_rows=opts.max_rows, seed=opts.seed, progress=bar)
        if bar is not None:
            bar.close()
        work.save_stats(groups)

    # 2. per-group search
    mods = dict(model.named_modules())
    cands = candidates(opts.alphas, opts.clamps) if opts.smooth else [Candidate(None)]
    results: list[GroupResult] = []
    fresh = 0
    bar = _progress(len(groups), f"search ({scheme.name})", opts.progress)
    for i, g in enumerate(groups):
        r = work.load_group(i) if opts.resume else None
        if r is None:
            weights = {n: (mods[n].weight.detach().to(opts.device), None if mods[n].bias is None
                           else mods[n].bias.detach().to(opts.device)) for n in g.members}
            g_dev = GroupStats(g.key, g.members, g.k, g.absmax.to(opts.device), g.amin.to(opts.device),
                               g.amax.to(opts.device), g.rows.to(opts.device), g.seen)
            r = search_group(scheme, g_dev, weights, cands, scale_min=opts.scale_min, act_dtype=act_dtype)
            r.tensors = {n: {s: t.cpu() for s, t in ts.items()} for n, ts in r.tensors.items()}
            work.save_group(i, r)
            fresh += 1
            if opts.fail_after_groups is not None and fresh >= opts.fail_after_groups:
                if bar is not None:
                    bar.close()
                raise CalibrationInterrupted(f"test hook: interrupted after {fresh} group(s)")
        results.append(r)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{g.key}: {r.group_before:.4f} -> {r.group_after:.4f}")
    if bar is not None:
        bar.close()

    member_result = {n: r for r in results for n in r.members}
    layers = {n: (scheme.label, member_result[n].tensors[n]) for n in quantized}

    # 3. model-level error (identity mul_scale vs calibrated), through the reference backend
    model_err = None
    if opts.evaluate:
        from .evaluate import model_error, model_outputs

        if opts.calib in (None, "default"):
            eval_calls = load_batches(None, lm, seq_len=opts.seq_len, num_samples=min(4, opts.num_samples) or 1,
                                      seed=opts.seed + 1000)
            eval_src = "built-in held-out inputs (different seed)"
        else:
            eval_calls, eval_src = calls[:4], "first calibration calls (in-sample)"
        eval_calls = [(tuple(_to(a, opts.device) for a in args), {k: _to(v, opts.device) for k, v in kw.items()})
                      for args, kw in eval_calls]
        stats_of = {n: g for g in groups for n in g.members}
        ident = {n: (scheme.label, quantize_member(scheme, mods[n].weight.detach(), None if mods[n].bias is None
                                                   else mods[n].bias.detach(), stats_of[n], None))
                 for n in quantized}
        refs = model_outputs(model, eval_calls)
        model_err = {"identity": model_error(model, eval_calls, ident, act_dtype, refs),
                     "calibrated": model_error(model, eval_calls, layers, act_dtype, refs),
                     "eval_data": eval_src, "calls": len(eval_calls)}
        model_err["improved"] = model_err["calibrated"] < model_err["identity"]
        if not model_err["improved"]:
            print(f"warning: calibration did not improve the model output error ({model_err['identity']:.4g} with "
                  f"mul_scale = 1 -> {model_err['calibrated']:.4g} calibrated, {eval_src}); the checkpoint is written "
                  f"as asked -- try other --alphas, more calibration data, or --no-smooth", file=sys.stderr)
        del ident

    # 4. report + checkpoint
    report = _report(recipe, recipe_hash, scheme, mods, quantized, kept, results, model_err)
    float_tensors = _float_tensors(model, quantized)
    if opts.fold_smooth:
        layers, float_tensors = _fold(opts, scheme, model, groups, layers, float_tensors, calls[0], report)
    meta = {"producer": PRODUCER, "version": _version(), "recipe_hash": recipe_hash,
            "calibration": {"scheme": scheme.name, "report": REPORT_JSON, "recipe": recipe}}
    # the groups found from data flow (layers reading one input tensor) are recorded for the reader
    write_ascendv1(out, layers, float_tensors, config=None if lm.copy_files else lm.config,
                   copy_from=lm.source if lm.copy_files else None, part_file_size=opts.part_file_size,
                   extra_description={"metadata": meta}, overwrite=opts.overwrite,
                   shared_input_groups=[r.members for r in results if len(r.members) > 1],
                   extra_files={REPORT_JSON: json.dumps(report, indent=2, sort_keys=False),
                                REPORT_MD: render_markdown(report)})
    shutil.rmtree(work.path, ignore_errors=True)
    return report


def _fold(opts: CalibOptions, scheme, model, groups, layers, float_tensors, call, report):
    """``--fold-smooth-into-norm``: msModelSlim's norm-linear fusion of mul_scale (checkpoint/fold.py).  Layers that
    cannot be folded keep their wrapper with a warning ("keep"), are quantized again without smoothing (mul_scale = 1,
    "unsmooth": the whole output is plain AscendV1), or stop the run before anything is written ("refuse"; the work
    directory stays, so ``--resume`` with another mode is quick)."""
    from ..checkpoint.fold import fold_smooth_into_norm

    if opts.fold_smooth not in FOLD_MODES:
        raise ValueError(f"--fold-smooth-into-norm {opts.fold_smooth!r}: use one of {', '.join(FOLD_MODES)}")
    res = fold_smooth_into_norm(model, layers, float_tensors, call)
    if res.kept and opts.fold_smooth == "refuse":
        lines = "\n".join(f"  {p}: {why}" for p, why in sorted(res.kept.items()))
        raise ValueError(f"--fold-smooth-into-norm refuse: {len(res.kept)} smoothed layer(s) cannot be folded into a "
                         f"norm; nothing was written (rerun with --resume and --fold-smooth-into-norm keep or unsmooth, "
                         f"or keep them float with --ignored-layers):\n{lines}")
    out = dict(res.layers)
    if opts.fold_smooth == "unsmooth":
        mods, stats_of = dict(model.named_modules()), {n: g for g in groups for n in g.members}
        for p in sorted(res.kept):
            lin = mods[p]
            out[p] = (out[p][0], quantize_member(scheme, lin.weight.detach(), None if lin.bias is None
                                                 else lin.bias.detach(), stats_of[p], None))
    for p, why in sorted(res.kept.items()):
        what = ("is quantized without smoothing (mul_scale = 1)" if opts.fold_smooth == "unsmooth" else
                "keeps msModelSlim's non-fusion smoothing wrapper (which vllm-ascend does not load)")
        print(f"warning: --fold-smooth-into-norm: {p} {what}: {why}", file=sys.stderr)
    report["fold_smooth_into_norm"] = {"mode": opts.fold_smooth, "folded": res.folded, "kept": res.kept}
    return out, res.float_tensors


def _to(v, device):
    return v.to(device) if isinstance(v, torch.Tensor) else v


def _report(recipe, recipe_hash, scheme, mods, quantized, kept, results, model_err) -> dict:
    rows = []
    for r in results:
        for n in r.members:
            m = mods[n]
            rows.append({"name": n, "group": r.key, "n": m.out_features, "k": m.in_features,
                         "choice": r.chosen.label, "alpha": r.chosen.alpha, "clamp": r.chosen.clamp,
                         "mul_scale": r.chosen.alpha is not None,
                         "err_before": r.err_before[n], "err_after": r.err_after[n]})
    order = {n: i for i, n in enumerate(quantized)}
    rows.sort(key=lambda x: order[x["name"]])
    return {
        "producer": PRODUCER,
        "version": recipe["version"],
        "recipe_hash": recipe_hash,
        "scheme": scheme.name,
        "label": scheme.label,
        "model": recipe["model"],
        "data": recipe["data"],
        "smooth": recipe["smooth"],
        "error_metric": "relative L2 of the layer output on the sampled calibration rows (before: mul_scale = 1)",
        "model_error": model_err,
        "layers": rows,
        "groups": [{"key": r.key, "members": r.members, "choice": r.chosen.label, "err_before": r.group_before,
                    "err_after": r.group_after, "scores": [list(s) for s in r.scores]} for r in results],
        "kept_float": [{"name": n, "reason": why} for n, why in kept.items()],
    }
