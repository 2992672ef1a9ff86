"""Calibration data from a real denoise loop: capture the transformer(s)' call inputs while a pipeline runs.

``CaptureInputs(pipe)`` is a context manager usable with any diffusers pipeline (or any
``{name: nn.Module}``): while it is active, every call of the pipeline's transformers
(``transformer``, and ``transformer_2`` for Wan2.2's two experts) is recorded -- the latents, the
timestep, the text embeddings, every tensor and JSON-able argument exactly as the pipeline passed
them (classifier-free guidance calls included).  Memory is bounded: at most ``max_samples`` calls
are kept per transformer, chosen by systematic sampling with a doubling stride (every call until
``max_samples`` are held, then every 2nd, 4th, ... call of the whole run), so the kept calls are
evenly spaced over the schedule, first step included, whatever the number of steps and prompts.
A kept call larger than ``spill_bytes`` is written at once to ``spill_dir`` as safetensors and
only its path is held.

``save(out_dir)`` writes ``<out_dir>/<name>.safetensors`` per transformer in the saved-inputs format
``calibrate --calib`` reads (``calibration/sources.py``: ``<i>.<kwarg>``, ``<i>.<j>`` positional,
``.<m>`` list items, non-tensor arguments as JSON metadata) plus ``capture.json`` (calls seen,
kept call indices, stride, timesteps kept).

``capture_pipeline(...)`` loads a pipeline directory and runs prompts under the capture; it is the
first half of ``omni-npu-quant calibrate --pipeline DIR --prompts FILE --steps S --height H --width W``
(``calibrate_pipeline``: capture, then calibrate every transformer into ``OUT/<subfolder>/``).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["CaptureInputs", "capture_pipeline", "calibrate_pipeline", "read_prompts", "CAPTURE_SUMMARY"]

CAPTURE_SUMMARY = "capture.json"


def _jsonable(v: Any, where: str):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, where) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x, f"{where}.{k}") for k, x in v.items()}
    raise ValueError(f"capture: argument {where} is a {type(v).__name__}; only tensors, lists of tensors and "
                     f"JSON values (numbers, strings, lists, dicts, None) can be saved as calibration inputs")


def _split_call(args: tuple, kwargs: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors keyed '<j>' / '<name>' / '<...>.<m>', JSON extras {"args": {j: v}, "kwargs": {name: v}})."""
    tensors: dict[str, torch.Tensor] = {}
    extra: dict = {"args": {}, "kwargs": {}}

    def put(key: str, v: Any, bucket: dict, bkey):
        if isinstance(v, torch.Tensor):
            tensors[key] = v.detach().to("cpu").clone().contiguous()
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, torch.Tensor) for x in v):
            for m, x in enumerate(v):
                tensors[f"{key}.{m}"] = x.detach().to("cpu").clone().contiguous()
        else:
            bucket[bkey] = _jsonable(v, key)

    for j, a in enumerate(args):
        put(str(j), a, extra["args"], str(j))
    for k, v in kwargs.items():
        put(k, v, extra["kwargs"], k)
    return tensors, extra


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _timestep_of(args: tuple, kwargs: dict):
    t = kwargs.get("timestep", kwargs.get("t", args[1] if len(args) > 1 else None))
    if isinstance(t, torch.Tensor) and t.numel():
        return float(t.detach().float().reshape(-1)[0])
    return t if isinstance(t, (int, float)) else None


@dataclass
class _Kept:
    index: int
    timestep: float | None
    extra: dict
    tensors: dict[str, torch.Tensor] | None = None  # in memory, or
    path: Path | None = None  # spilled to disk

    def load(self) -> dict[str, torch.Tensor]:
        if self.tensors is not None:
            return self.tensors
        from safetensors.torch import load_file

        return load_file(str(self.path))

    def drop(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass
class _Stream:
    name: str
    max_samples: int
    stride: int = 1
    seen: int = 0
    kept: list[_Kept] = field(default_factory=list)


def _find_transformers(pipe) -> dict[str, nn.Module]:
    if isinstance(pipe, Mapping):
        mods = dict(pipe)
    elif isinstance(pipe, nn.Module) and not hasattr(pipe, "components"):
        mods = {"transformer": pipe}
    else:
        comps = getattr(pipe, "components", None) or {}
        mods = {k: v for k, v in comps.items() if k.startswith("transformer") and isinstance(v, nn.Module)}
    bad = [k for k, v in mods.items() if not isinstance(v, nn.Module)]
    if bad:
        raise ValueError(f"capture: {bad} are not nn.Modules")
    if not mods:
        raise ValueError(f"capture: {type(pipe).__name__} has no transformer component (looked for components "
                         f"named transformer*); pass {{name: module}} explicitly")
    return mods


class CaptureInputs:
    """Record the call inputs of a pipeline's transformer(s) while the pipeline runs (see the module doc).

    :param pipe: a diffusers pipeline (its ``transformer*`` components), one ``nn.Module``, or ``{name: module}``.
    :param max_samples: calls kept per transformer (>= 1).
    :param spill_dir: where kept calls larger than ``spill_bytes`` are written (default: kept in memory).
    """

    def __init__(self, pipe, *, max_samples: int = 8, spill_dir=None, spill_bytes: int = 16 << 20):
        if int(max_samples) < 1:
            raise ValueError(f"capture: max_samples must be >= 1, got {max_samples}")
        self.modules = _find_transformers(pipe)
        self.max_samples = int(max_samples)
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        self.spill_bytes = int(spill_bytes)
        self.streams = {n: _Stream(n, self.max_samples) for n in self.modules}
        self._handles: list = []

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> "CaptureInputs":
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        st = self.streams[name]

        def pre_hook(mod, args, kwargs):
            i = st.seen
            st.seen += 1
            if i % st.stride:
                return None
            tensors, extra = _split_call(tuple(args), dict(kwargs))
            k = _Kept(i, _timestep_of(tuple(args), dict(kwargs)), extra)
            if self.spill_dir is not None and _nbytes(tensors) > self.spill_bytes:
                from safetensors.torch import save_file

                d = self.spill_dir / name
                d.mkdir(parents=True, exist_ok=True)
                k.path = d / f"{i:08d}.safetensors"
                save_file(tensors, str(k.path))
            else:
                k.tensors = tensors
            st.kept.append(k)
            while len(st.kept) > st.max_samples:  # double the stride, keep the calls on it
                st.stride *= 2
                keep = [s for s in st.kept if s.index % st.stride == 0]
                for s in st.kept:
                    if s.index % st.stride:
                        s.drop()
                st.kept = keep
            return None
        return pre_hook

    # -- results ------------------------------------------------------------------------------
    def summary(self) -> dict:
        return {n: {"calls_seen": s.seen, "kept": len(s.kept), "stride": s.stride,
                    "kept_call_indices": [k.index for k in s.kept],
                    "timesteps": [k.timestep for k in s.kept]} for n, s in self.streams.items()}

    def save(self, out_dir) -> dict[str, Path]:
        """Write ``<out_dir>/<name>.safetensors`` per transformer (+ ``capture.json``); returns the paths."""
        from safetensors.torch import save_file

        from .sources import CALLS_META_KEY

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, st in self.streams.items():
            if not st.kept:
                raise ValueError(f"capture: {name} was never called while the capture was active")
            tensors: dict[str, torch.Tensor] = {}
            meta: dict = {}
            for i, k in enumerate(st.kept):
                for key, t in k.load().items():
                    tensors[f"{i}.{key}"] = t
                if k.extra["args"] or k.extra["kwargs"]:
                    meta[str(i)] = k.extra
            p = out / f"{name}.safetensors"
            save_file(tensors, str(p), metadata={CALLS_META_KEY: json.dumps(meta, sort_keys=True)})
            paths[name] = p
        (out / CAPTURE_SUMMARY).write_text(json.dumps(self.summary(), indent=2), encoding="utf-8")
        return paths


# ------------------------------------------------------------------------------------------------
def read_prompts(path) -> list[str]:
    """Prompts of a ``.txt`` (one per line) or ``.jsonl`` (``text`` / ``prompt``) file."""
    from .sources import _read_prompts

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--prompts {path}: no such file")
    return _read_prompts(p)


def capture_pipeline(pipeline_dir, prompts: list[str], *, steps: int, height: int, width: int,
                     num_frames: int | None = None, guidance_scale: float | None = None,
                     negative_prompt: str | None = None, max_sequence_length: int | None = None,
                     max_samples: int = 8, seed: int = 0, dtype: torch.dtype | None = None, out_dir,
                     device: str = "cpu", progress: bool = True) -> tuple[dict[str, Path], dict]:
    """Load a diffusers pipeline directory, run ``prompts`` with ``steps`` denoising steps under
    ``CaptureInputs`` and save the captured inputs to ``out_dir``; returns (paths, summary)."""
    from ..models.loading import DIFFUSERS_PIPELINE, ModelLoadError, detect, pipeline_transformers, quiet_third_party
    from ..models.loading import stored_dtype

    pdir = Path(pipeline_dir)
    if detect(pdir) != DIFFUSERS_PIPELINE:
        raise ModelLoadError(f"--pipeline {pdir}: no model_index.json (a diffusers pipeline directory is needed)")
    subs = pipeline_transformers(pdir)
    if steps < 1 or height < 1 or width < 1:
        raise ValueError(f"--steps / --height / --width must be >= 1 (got {steps}, {height}, {width})")
    if not prompts:
        raise ValueError("--prompts: no prompts")
    import diffusers

    want = dtype or stored_dtype(pdir / subs[0]) or torch.float32
    with quiet_third_party():
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(pdir), torch_dtype=want, local_files_only=True)
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=not progress)
    params = inspect.signature(pipe.__call__).parameters
    call = {"num_inference_steps": steps, "height": height, "width": width, "output_type": "latent"}
    optional = {"num_frames": num_frames, "guidance_scale": guidance_scale, "negative_prompt": negative_prompt,
                "max_sequence_length": max_sequence_length}
    for k, v in optional.items():
        if v is None:
            continue
        if k not in params:
            raise ValueError(f"--{k.replace('_', '-')}: {type(pipe).__name__} takes no {k}")
        call[k] = v
    missing = [k for k in ("num_inference_steps", "height", "width") if k not in params]
    if missing:
        raise ValueError(f"{type(pipe).__name__}.__call__ takes no {missing}; capture_pipeline needs a text-to-image "
                         f"/ video pipeline (or use CaptureInputs around your own call)")
    cap = CaptureInputs({s: getattr(pipe, s) for s in subs}, max_samples=max_samples,
                        spill_dir=Path(out_dir) / "spill")
    with cap, torch.no_grad():
        for i, prompt in enumerate(prompts):
            gen = torch.Generator(device="cpu").manual_seed(seed + i)
            with quiet_third_party():
                pipe(prompt=prompt, generator=gen, **call)
    paths = cap.save(out_dir)
    shutil.rmtree(Path(out_dir) / "spill", ignore_errors=True)
    return paths, cap.summary()


def calibrate_pipeline(opts, **kwargs) -> dict:
    """``_calibrate_pipeline`` under the output's lock (``checkpoint.writer.output_lock``): a concurrent run on
    the same ``--out`` fails naming this one's pid instead of deleting its capture or output directory."""
    from ..checkpoint.writer import output_lock

    with output_lock(opts.out):
        return _calibrate_pipeline(opts, **kwargs)


def _calibrate_pipeline(opts, *, pipeline: str, prompts: list[str], steps: int, height: int, width: int,
                        num_frames: int | None = None, guidance_scale: float | None = None,
                        negative_prompt: str | None = None, max_sequence_length: int | None = None) -> dict:
    """Capture a denoise loop of ``pipeline`` and calibrate every transformer into ``opts.out/<subfolder>/``.

    ``opts`` is a ``CalibOptions`` template (its ``model`` / ``calib`` / ``out`` are set per transformer);
    ``opts.num_samples`` calls are kept per transformer.  Returns ``{subfolder: report}`` plus ``capture``.
    """
    from .pipeline import calibrate
    from .sources import DTYPES

    out = Path(opts.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.overwrite:
        raise ValueError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    work = out.parent / f"{out.name}.capture"
    shutil.rmtree(work, ignore_errors=True)
    dtype = DTYPES[opts.dtype] if opts.dtype else None
    paths, summary = capture_pipeline(pipeline, prompts, steps=steps, height=height, width=width,
                                      num_frames=num_frames, guidance_scale=guidance_scale,
                                      negative_prompt=negative_prompt, max_sequence_length=max_sequence_length,
                                      max_samples=max(1, opts.num_samples), seed=opts.seed, dtype=dtype,
                                      out_dir=work, device=opts.device, progress=opts.progress)
    if out.exists() and opts.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for sub, calib in paths.items():
        if opts.progress:
            print(f"calibrating {sub} on {summary[sub]['kept']} captured call(s) of {summary[sub]['calls_seen']}",
                  file=sys.stderr)
        sub_opts = dataclasses.replace(opts, model=str(Path(pipeline) / sub), calib=str(calib), out=str(out / sub),
                                       factory=None, num_samples=0, overwrite=True, resume=False)
        reports[sub] = calibrate(sub_opts)
    shutil.copyfile(Path(pipeline) / "model_index.json", out / "model_index.json")
    (out / CAPTURE_SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return {"transformers": reports, "capture": summary}
