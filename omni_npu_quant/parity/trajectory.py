"""Trajectory parity: the full denoise loop of a diffusers pipeline, float vs quantized, judged by its images.

Same prompt, seed, steps and resolution for every run.  One *float* run per device is the
reference; every *variant* (a scheme on a backend, optionally with a ``QuantConfig`` of its own:
``ignored_layers``, ``num_bf16_fallback_layers``...) swaps the pipeline's transformer(s) --
``transformer`` and, for Wan2.2 A14B, ``transformer_2`` -- for quantized copies and runs the same
call.  The VAE, text encoders and scheduler are never quantized.

Metrics use vLLM-Omni's names and definitions (vllm-project/vllm-omni
``vllm_omni/quantization/tools/compare_diffusion_trajectory_similarity.py``: ``compute_tensor_metrics``,
``compute_uint8_image_metrics``, ``_frame_to_uint8_rgb``):

* decoded output: every frame converted to uint8 RGB (float output clipped to [0, 1], times 255,
  rounded); ``psnr_db = 20 log10(255) - 10 log10(mse)``, ``mae`` / ``max_abs`` / ``rmse`` in pixel
  values, ``relative_l2 = ||cand - ref|| / ||ref||``, ``cosine_similarity`` of the flattened pixels;
  reported for frame 0, the middle frame and all frames together (videos), the verdict uses all frames;
* final latents (the scheduler's output after the last step, before the VAE) and every step's
  latents: the same names from ``parity.metrics.compare``; latent ``psnr_db`` takes the reference's
  dynamic range as peak (``parity.metrics`` convention), since latents have no fixed range;
* the per-step curve: ``relative_l2`` and ``cosine_similarity`` of each step's latents.

Thresholds (decoded pixels only, as vLLM-Omni applies them): ``smoke`` is vLLM-Omni's
"recommended" tier, ``strict`` its "good" tier for psnr_db / mae and its "strict" tier for
cosine_similarity / relative_l2 (``metric_guidance()`` there: psnr_db 20 / 25 / 30, mae 12 / 6 / 3,
cosine 0.98 / 0.995, relative_l2 0.20 / 0.08); ``VLLM_OMNI_GUIDANCE`` keeps all of its tiers.

Each scheme is quantized once per device and its copies are re-pointed at every backend (the stored
tensors are the same; each backend prepares them again), so ``quantize_time_s`` is per scheme.
Wall time is the pipeline call only (quantization is timed separately); peak memory is
``torch.cuda.max_memory_allocated`` on CUDA, else the peak resident set size of this process during
the call (sampled every 2 ms; it includes everything the process holds, so compare runs, not totals).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .metrics import compare

__all__ = ["TrajectoryRequest", "TrajectoryRunner", "RunResult", "THRESHOLDS", "VLLM_OMNI_GUIDANCE",
           "image_metrics", "latent_metrics", "frames_uint8", "verdict", "run_trajectory", "write_report",
           "TrajectoryError", "pipeline_transformer_names"]

THRESHOLDS = {
    "smoke": {"psnr_db_min": 20.0, "mae_max": 12.0, "cosine_similarity_min": 0.98, "relative_l2_max": 0.20},
    "strict": {"psnr_db_min": 25.0, "mae_max": 6.0, "cosine_similarity_min": 0.995, "relative_l2_max": 0.08},
}
# vLLM-Omni's metric_guidance()["recommended_thresholds"]["output_images_or_frames_uint8"], for the record
VLLM_OMNI_GUIDANCE = {
    "psnr_db": {"recommended_min": 20.0, "good_min": 25.0, "strict_min": 30.0},
    "mae": {"recommended_max": 12.0, "good_max": 6.0, "strict_max": 3.0},
    "cosine_similarity": {"recommended_min": 0.98, "strict_min": 0.995},
    "relative_l2": {"recommended_max": 0.20, "strict_max": 0.08},
}
_TRANSFORMER_NAMES = ("transformer", "transformer_2")


class TrajectoryError(ValueError):
    """A trajectory run cannot be set up; the message names the pipeline / argument at fault."""


@dataclass
class TrajectoryRequest:
    """One generation request, identical for every run."""
    prompt: str = "a red cat on the house"
    seed: int = 0
    steps: int = 4
    height: int = 32
    width: int = 32
    num_frames: int | None = None
    guidance_scale: float | None = None
    max_sequence_length: int | None = None
    negative_prompt: str | None = None

    def __post_init__(self):
        for k in ("steps", "height", "width"):
            if int(getattr(self, k)) < 1:
                raise TrajectoryError(f"--{k}: must be >= 1, got {getattr(self, k)}")
        if self.num_frames is not None and int(self.num_frames) < 1:
            raise TrajectoryError(f"--num-frames: must be >= 1, got {self.num_frames}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise TrajectoryError("--prompt: empty prompt")


@dataclass
class RunResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    step_latents: list[torch.Tensor]  # float32, CPU, one per denoising step
    wall_s: float
    peak_memory_mb: float | None
    memory_kind: str
    quantize_s: float = 0.0

    @property
    def final_latent(self) -> torch.Tensor:
        return self.step_latents[-1]


# ------------------------------------------------------------------------------------------------ metrics
def frames_uint8(output) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of a pipeline output (``.images`` / ``.frames``, numpy or torch, [0, 1])."""
    arr = getattr(output, "frames", None)
    if arr is None:
        arr = getattr(output, "images", None)
    if arr is None:
        raise TrajectoryError(f"pipeline output {type(output).__name__} has neither .frames nor .images")
    if isinstance(arr, list) and arr and hasattr(arr[0], "convert"):  # PIL
        arr = np.stack([np.asarray(im.convert("RGB")) for im in arr])
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().float().cpu().numpy()
    arr = np.asarray(arr)
    if arr.ndim == 5:  # (B, T, H, W, C) video: the first request's frames
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise TrajectoryError(f"pipeline output of shape {arr.shape}: expected (frames, H, W, C) images")
    if not np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0
        arr = arr.round()
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def _named(m: dict) -> dict:
    """parity.metrics names -> vLLM-Omni names (plus mse / rmse / l2)."""
    return {"cosine_similarity": m["cosine"], "mae": m["mae"], "max_abs": m["max_abs"],
            "relative_l2": m["rel_l2"], "new_nonfinite": m["new_nonfinite"]}


def _pixel_metrics(ref: np.ndarray, cand: np.ndarray) -> dict:
    r = torch.from_numpy(np.ascontiguousarray(ref)).double()
    c = torch.from_numpy(np.ascontiguousarray(cand)).double()
    out = _named(compare(c, r, out_dtype=torch.float64))
    d = c - r
    mse = float((d * d).mean())
    out.update(mse=mse, rmse=math.sqrt(mse), l2=float(d.norm()),
               psnr_db=math.inf if mse == 0.0 else 20 * math.log10(255.0) - 10 * math.log10(mse))
    return out


def image_metrics(ref: np.ndarray, cand: np.ndarray) -> dict:
    """vLLM-Omni's output metrics of two (F, H, W, 3) uint8 frame stacks: frame 0, middle frame, all frames."""
    if ref.shape != cand.shape:
        raise TrajectoryError(f"decoded output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    mid = len(ref) // 2
    return {"num_frames": int(len(ref)), "frame0_metrics": _pixel_metrics(ref[0], cand[0]),
            "mid_frame_index": mid, "mid_frame_metrics": _pixel_metrics(ref[mid], cand[mid]),
            "all_frames_metrics": _pixel_metrics(ref, cand)}


def latent_metrics(ref: torch.Tensor, cand: torch.Tensor) -> dict:
    m = compare(cand, ref, out_dtype=torch.float32)
    out = _named(m)
    out["psnr_db"] = m["psnr_db"]
    return out


def verdict(pixels: dict) -> dict:
    """{tier: {"pass": bool, "failures": [...]}} on the all-frames pixel metrics."""
    out = {}
    for tier, t in THRESHOLDS.items():
        fails = []
        if not pixels["psnr_db"] >= t["psnr_db_min"]:
            fails.append(f"psnr_db {pixels['psnr_db']:.2f} < {t['psnr_db_min']}")
        if not pixels["mae"] <= t["mae_max"]:
            fails.append(f"mae {pixels['mae']:.3f} > {t['mae_max']}")
        if not pixels["cosine_similarity"] >= t["cosine_similarity_min"]:
            fails.append(f"cosine_similarity {pixels['cosine_similarity']:.5f} < {t['cosine_similarity_min']}")
        if not pixels["relative_l2"] <= t["relative_l2_max"]:
            fails.append(f"relative_l2 {pixels['relative_l2']:.4f} > {t['relative_l2_max']}")
        if pixels.get("new_nonfinite"):
            fails.append(f"{pixels['new_nonfinite']} non-finite pixel(s)")
        out[tier] = {"pass": not fails, "failures": fails}
    return out


# ------------------------------------------------------------------------------------------------ memory
class _PeakMemory:
    """Peak memory during a block: CUDA allocator peak on a CUDA device, else sampled process RSS."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_peak_rss"
        self._stop = threading.Event()
        self._thread = None
        self._peak = 0

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            try:
                import psutil

                return int(psutil.Process().memory_info().rss)
            except Exception:  # noqa: BLE001 - no way to measure here: reported as None
                return -1

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            self._stop.wait(0.002)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mb = None if self._peak < 0 else self._peak / 2**20
        return False


# ------------------------------------------------------------------------------------------------ runner
def pipeline_transformer_names(pipe) -> list[str]:
    names = [n for n in _TRANSFORMER_NAMES if isinstance(getattr(pipe, n, None), nn.Module)]
    if not names:
        raise TrajectoryError(f"{type(pipe).__name__} has no transformer component (looked for "
                              f"{', '.join(_TRANSFORMER_NAMES)})")
    return names


def _load_pipeline(path: Path, dtype: torch.dtype | None):
    from ..models.loading import DIFFUSERS_PIPELINE, detect, pipeline_transformers, quiet_third_party, stored_dtype

    if detect(path) != DIFFUSERS_PIPELINE:
        raise TrajectoryError(f"--pipeline {path}: no model_index.json (trajectory parity needs a diffusers "
                              f"pipeline directory: transformer, VAE, text encoder, scheduler)")
    subs = pipeline_transformers(path)
    want = dtype or stored_dtype(path / subs[0]) or torch.float32
    import diffusers

    with quiet_third_party():
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(path), torch_dtype=want, local_files_only=True)
    return pipe, want


class TrajectoryRunner:
    """Runs one request through a pipeline, float and quantized (see the module docstring).

    :param pipeline: a diffusers pipeline directory or a loaded pipeline object.
    :param request: the ``TrajectoryRequest`` every run uses.
    :param reload_from_disk: quantize a fresh copy of each transformer loaded from the pipeline
        directory (bounded memory for real models) instead of a deep copy of the loaded one.
    """

    def __init__(self, pipeline, request: TrajectoryRequest, *, dtype: torch.dtype | None = None,
                 reload_from_disk: bool | None = None):
        self.request = request
        if isinstance(pipeline, (str, Path)):
            self.path: Path | None = Path(pipeline)
            self.pipe, self.dtype = _load_pipeline(self.path, dtype)
        else:
            self.path = None
            self.pipe = pipeline
            self.dtype = dtype or next((p.dtype for p in pipeline_transformer_module(pipeline).parameters()
                                        if p.is_floating_point()), torch.float32)
        self.reload_from_disk = bool(self.path is not None if reload_from_disk is None else reload_from_disk)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        self.subs = pipeline_transformer_names(self.pipe)
        self._float = {s: getattr(self.pipe, s) for s in self.subs}
        self._refs: dict[str, RunResult] = {}
        self._ranges: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
        self.call_kwargs = self._call_kwargs()

    # -- the call ------------------------------------------------------------------------------
    def _call_kwargs(self) -> dict:
        params = inspect.signature(self.pipe.__call__).parameters
        name = type(self.pipe).__name__
        for k in ("num_inference_steps", "height", "width", "callback_on_step_end", "output_type"):
            if k not in params:
                raise TrajectoryError(f"{name}.__call__ takes no {k}: trajectory parity needs a text-to-image / "
                                      f"video pipeline with callback_on_step_end")
        r = self.request
        kw = {"num_inference_steps": r.steps, "height": r.height, "width": r.width, "output_type": "np"}
        for k in ("num_frames", "guidance_scale", "max_sequence_length", "negative_prompt"):
            v = getattr(r, k)
            if v is None:
                continue
            if k not in params:
                raise TrajectoryError(f"--{k.replace('_', '-')}: {name} takes no {k}")
            kw[k] = v
        return kw

    def _generate(self, device: torch.device, record: dict | None = None) -> RunResult:
        latents: list[torch.Tensor] = []

        def on_step(pipe, i, t, kwargs):
            lat = kwargs.get("latents")
            if not isinstance(lat, torch.Tensor):
                raise TrajectoryError(f"{type(pipe).__name__}: callback_on_step_end gave no 'latents' tensor")
            latents.append(lat.detach().float().cpu().clone())
            return kwargs

        from ..models.loading import quiet_third_party

        gen = torch.Generator(device="cpu").manual_seed(int(self.request.seed))
        meter = _PeakMemory(device)
        hooks = self._range_hooks(record) if record is not None else []
        try:
            with torch.no_grad(), quiet_third_party(), meter:
                t0 = time.perf_counter()
                out = self.pipe(prompt=self.request.prompt, generator=gen, callback_on_step_end=on_step,
                                callback_on_step_end_tensor_inputs=["latents"], **self.call_kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                wall = time.perf_counter() - t0
        finally:
            for h in hooks:
                h.remove()
        if not latents:
            raise TrajectoryError(f"{type(self.pipe).__name__} never called callback_on_step_end")
        return RunResult(frames_uint8(out), latents, wall, meter.peak_mb, meter.kind)

    def _range_hooks(self, record: dict) -> list:
        hooks = []
        for s in self.subs:
            per = record.setdefault(s, {})
            for n, m in getattr(self.pipe, s).named_modules():
                if not isinstance(m, nn.Linear):
                    continue

                def hook(mod, args, _n=n, _per=per):
                    x = args[0].detach()
                    lo, hi = float(x.min()), float(x.max())
                    r = _per.get(_n)
                    _per[_n] = (lo, hi) if r is None else (min(r[0], lo), max(r[1], hi))
                hooks.append(m.register_forward_pre_hook(hook))
        return hooks

    def _to(self, device: torch.device) -> None:
        self.pipe.to(device)

    def with_request(self, request: TrajectoryRequest) -> "TrajectoryRunner":
        """A runner for another request on the same loaded pipeline (float reference runs are per request)."""
        other = copy.copy(self)
        other.request = request
        other._refs, other._ranges = {}, {}
        other.call_kwargs = other._call_kwargs()
        return other

    # -- float reference -----------------------------------------------------------------------
    def reference(self, device="cpu") -> RunResult:
        """The float run on ``device`` (cached); it also records every linear's input range (w8a8_static)."""
        dev = torch.device(device)
        key = str(dev)
        if key not in self._refs:
            self._restore()
            self._to(dev)
            ranges: dict = {}
            self._refs[key] = self._generate(dev, record=ranges)
            self._ranges[key] = ranges
        return self._refs[key]

    def _restore(self) -> None:
        for s, m in self._float.items():
            setattr(self.pipe, s, m)

    def _fresh(self, sub: str, device: torch.device) -> nn.Module:
        if self.reload_from_disk:
            from ..models.loading import load_dir

            return load_dir(self.path / sub, dtype=self.dtype).model.to(device)
        return copy.deepcopy(self._float[sub]).to(device)

    # -- a quantized variant -------------------------------------------------------------------
    def quantize(self, config, backend: str, device="cpu") -> tuple[dict[str, nn.Module], float]:
        """Fresh copies of the transformer(s) quantized with ``config`` on ``backend``; (modules, seconds)."""
        from ..integrations.torch import QuantConfig, quantize_
        from ..schemes.registry import get_scheme

        if isinstance(config, dict):
            config = QuantConfig.from_dict(config)
        dev = torch.device(device)
        self.reference(dev)
        ranges = self._ranges[str(dev)]
        static = get_scheme(config.scheme).needs_calibration if config.scheme != "float" else False
        t0 = time.perf_counter()
        out = {}
        for s in self.subs:
            m = self._fresh(s, dev)
            kw = {"act_ranges": ranges.get(s, {})} if static or config.layer_schemes else {}
            quantize_(m, config, backend=backend, **kw)
            out[s] = m
        return out, time.perf_counter() - t0

    @staticmethod
    def rebind(modules: dict[str, nn.Module], backend: str) -> None:
        """Point every ``QuantLinear`` of ``modules`` at another backend (same stored tensors, prepared again)."""
        from ..integrations.torch.module import QuantLinear

        for m in modules.values():
            for name, q in [(n, x) for n, x in m.named_modules() if isinstance(x, QuantLinear)]:
                new = QuantLinear(q.scheme, dict(q.tensors), backend=backend, act_dtype=q.act_dtype,
                                  name=q.layer_name, k=q.in_features)
                parent, _, child = name.rpartition(".")
                setattr(m.get_submodule(parent) if parent else m, child, new)

    def run_quantized(self, modules: dict[str, nn.Module], device="cpu", *, label: str = "variant") -> RunResult:
        """Run the request with ``modules`` in place of the float transformer(s), then put the float ones back."""
        dev = torch.device(device)
        ref = self.reference(dev)
        try:
            for s, m in modules.items():
                setattr(self.pipe, s, m)
            # The float runs of several devices leave the pipeline on the last one: bring the other components
            # (text encoders, VAE) to this variant's device. The float transformer(s) are not in the pipeline now,
            # so they are not copied along.
            self._to(dev)
            res = self._generate(dev)
        finally:
            self._restore()
        if res.frames.shape != ref.frames.shape or len(res.step_latents) != len(ref.step_latents):
            raise TrajectoryError(f"{label}: output {res.frames.shape} x {len(res.step_latents)} steps differs from "
                                  f"the float run's {ref.frames.shape} x {len(ref.step_latents)} steps")
        return res

    def run_variant(self, config, backend: str, device="cpu") -> RunResult:
        """Quantize fresh copies of the transformer(s) with ``config`` on ``backend`` and run the request."""
        mods, tq = self.quantize(config, backend, device)
        res = self.run_quantized(mods, device, label=f"{getattr(config, 'scheme', config)}@{backend}")
        res.quantize_s = tq
        return res

    def compare(self, res: RunResult, device="cpu") -> dict:
        """Metrics of a variant's run against the float run on the same device."""
        ref = self.reference(device)
        px = image_metrics(ref.frames, res.frames)
        curve = [latent_metrics(a, b) for a, b in zip(ref.step_latents, res.step_latents)]
        return {"output_metrics": px, "final_latent_metrics": latent_metrics(ref.final_latent, res.final_latent),
                "per_step": [{"step": i, "relative_l2": c["relative_l2"],
                              "cosine_similarity": c["cosine_similarity"]} for i, c in enumerate(curve)],
                "verdict": verdict(px["all_frames_metrics"])}


def pipeline_transformer_module(pipe) -> nn.Module:
    return getattr(pipe, pipeline_transformer_names(pipe)[0])


# ------------------------------------------------------------------------------------------------ the report
def _capability(scheme: str, backend: str) -> tuple[str, str]:
    from ..backends.registry import get_backend
    from ..schemes.registry import get_scheme

    cap = get_backend(backend).capability(get_scheme(scheme))
    return cap.mode, cap.reason


def run_trajectory(pipeline, request: TrajectoryRequest, *, schemes: Iterable[str], backends: Iterable[str],
                   base_config: dict | None = None, dtype: torch.dtype | None = None,
                   progress: Callable[[str], None] | None = None, keep_images: bool = True) -> dict:
    """Float vs every (scheme, backend); returns the report dict (``write_report`` writes it).

    ``base_config``: QuantConfig fields applied to every variant (``ignored_layers``,
    ``num_bf16_fallback_layers``, ...); its ``scheme`` is replaced by each scheme of ``schemes``.
    """
    from ..integrations.torch import QuantConfig
    from ..schemes.registry import get_scheme
    from .backends import resolve_backends

    schemes = [get_scheme(s).name for s in schemes]
    if not schemes:
        raise TrajectoryError("--schemes: give at least one scheme")
    base = dict(base_config or {})
    base.pop("backend", None)
    statuses = resolve_backends(list(dict.fromkeys(backends)))
    runner = pipeline if isinstance(pipeline, TrajectoryRunner) else TrajectoryRunner(pipeline, request, dtype=dtype)
    if runner.request != request:
        runner = runner.with_request(request)
    say = progress or (lambda m: None)
    refs, rows, images = {}, [], {}
    avail = []
    for st in statuses:
        if not st.available:
            rows.append({"scheme": None, "backend": st.name, "status": "unavailable", "reason": st.reason})
            continue
        avail.append(st)
        dev = str(st.device)
        if dev not in refs:
            say(f"float run on {dev}")
            refs[dev] = runner.reference(dev)
            if keep_images:
                images[f"float@{dev}"] = refs[dev].frames
    for scheme in schemes:
        cfg = QuantConfig.from_dict({**base, "scheme": scheme})
        cache: dict[str, tuple[dict, float]] = {}  # per device: the quantized copies, re-pointed per backend
        for st in avail:
            dev = str(st.device)
            label = f"{scheme}@{st.name}"
            mode, why = _capability(scheme, st.name)
            if mode == "unsupported":
                rows.append({"scheme": scheme, "backend": st.name, "status": "unsupported", "reason": why})
                say(f"{label}: unsupported ({why})")
                continue
            say(f"{label}: quantize + run")
            if dev not in cache:
                cache[dev] = runner.quantize(cfg, st.name, dev)
            else:
                runner.rebind(cache[dev][0], st.name)
            mods, tq = cache[dev]
            res = runner.run_quantized(mods, dev, label=label)
            cmp_ = runner.compare(res, dev)
            rows.append({"scheme": scheme, "backend": st.name, "status": "ok", "mode": mode, "mode_reason": why,
                         "device": dev, "generation_time_s": res.wall_s, "quantize_time_s": tq,
                         "peak_memory_mb": res.peak_memory_mb, "memory_kind": res.memory_kind, **cmp_})
            if keep_images:
                images[label] = res.frames
            px = cmp_["output_metrics"]["all_frames_metrics"]
            say(f"{label}: psnr_db {px['psnr_db']:.2f}, mae {px['mae']:.3f}, "
                f"strict {'PASS' if cmp_['verdict']['strict']['pass'] else 'FAIL'}")
        cache.clear()
    first = next(iter(refs.values()), None)
    rep = {
        "pipeline": str(runner.path) if runner.path else type(runner.pipe).__name__,
        "pipeline_class": type(runner.pipe).__name__,
        "transformers": runner.subs,
        "dtype": str(runner.dtype).replace("torch.", ""),
        "request": asdict(request),
        "call_kwargs": {k: v for k, v in runner.call_kwargs.items()},
        "base_config": base,
        "thresholds": THRESHOLDS,
        "vllm_omni_guidance": VLLM_OMNI_GUIDANCE,
        "metric_notes": {
            "output_metrics": "uint8 RGB pixels (clip [0,1] x 255, rounded) as vLLM-Omni's "
                              "compare_diffusion_trajectory_similarity; the verdict uses all_frames_metrics",
            "final_latent_metrics": "the latents after the last scheduler step (before the VAE); psnr_db peak = "
                                    "the float latents' dynamic range",
            "per_step": "relative_l2 / cosine_similarity of each step's latents against the float run's",
            "w8a8_static": "activation ranges recorded during the float run of this same request",
        },
        "backends": [s.to_json() for s in statuses],
        "float_runs": {dev: {"generation_time_s": r.wall_s, "peak_memory_mb": r.peak_memory_mb,
                             "memory_kind": r.memory_kind, "frames": list(r.frames.shape),
                             "latent_shape": list(r.final_latent.shape), "steps": len(r.step_latents)}
                       for dev, r in refs.items()},
        "rows": rows,
        "frames_shape": None if first is None else list(first.frames.shape),
    }
    if keep_images:
        rep["_images"] = images
    return rep


def _f(v, fmt=".4g") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return format(v, fmt)


def to_markdown(rep: dict) -> str:
    r = rep["request"]
    lines = [f"# Trajectory parity: {rep['pipeline_class']} ({', '.join(rep['transformers'])})", "",
             f"Pipeline `{Path(str(rep['pipeline'])).name}`, {rep['dtype']}; prompt {r['prompt']!r}, seed {r['seed']}, "
             f"{r['steps']} steps, {r['height']}x{r['width']}"
             + (f", {r['num_frames']} frames" if r.get("num_frames") else "")
             + (f", guidance {r['guidance_scale']}" if r.get("guidance_scale") is not None else "") + ".", ""]
    if rep.get("base_config"):
        lines += [f"Every variant also uses: `{rep['base_config']}`.", ""]
    lines += ["Decoded-output metrics (all frames, uint8 pixels, vLLM-Omni's definitions); thresholds: smoke = "
              "psnr_db >= 20, mae <= 12, cosine >= 0.98, relative_l2 <= 0.20; strict = 25, 6, 0.995, 0.08.", "",
              "| scheme | backend | mode | psnr_db | mae | cosine | rel_l2 | latent rel_l2 | latent cosine | "
              "last-step rel_l2 | gen s | quant s | peak MB | smoke | strict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rep["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['scheme'] or '–'} | {row['backend']} | {row['status']} | "
                         + " | ".join(["–"] * 12) + " |")
            continue
        px = row["output_metrics"]["all_frames_metrics"]
        lat = row["final_latent_metrics"]
        v = row["verdict"]
        lines.append(
            f"| {row['scheme']} | {row['backend']} | {row['mode']} | {_f(px['psnr_db'], '.2f')} | {_f(px['mae'], '.3f')} | "
            f"{_f(px['cosine_similarity'], '.5f')} | {_f(px['relative_l2'], '.4f')} | {_f(lat['relative_l2'], '.4f')} | "
            f"{_f(lat['cosine_similarity'], '.5f')} | {_f(row['per_step'][-1]['relative_l2'], '.4f')} | "
            f"{_f(row['generation_time_s'], '.2f')} | {_f(row['quantize_time_s'], '.2f')} | "
            f"{_f(row['peak_memory_mb'], '.0f')} | {'PASS' if v['smoke']['pass'] else 'FAIL'} | "
            f"{'PASS' if v['strict']['pass'] else 'FAIL'} |")
    skipped = [row for row in rep["rows"] if row["status"] != "ok"]
    if skipped:
        lines += ["", "Not run:", ""] + [f"* {row['scheme'] or 'all'} on {row['backend']}: {row['status']} — "
                                         f"{row['reason']}" for row in skipped]
    lines += ["", "Float runs: " + "; ".join(f"{d}: {_f(f['generation_time_s'], '.2f')} s, peak "
                                            f"{_f(f['peak_memory_mb'], '.0f')} MB ({f['memory_kind']})"
                                            for d, f in rep["float_runs"].items()), "",
              "Mode: `native` = the backend's own kernels; `fallback` = an exact or documented fallback of that "
              "backend (e.g. MX on A2 runs weight-only: activations unquantized), see `omni-npu-quant env`.",
              "Peak memory: CUDA allocator peak on GPUs; on CPU the process's peak RSS during the call "
              "(everything the process holds, so compare rows, not totals)."]
    return "\n".join(lines) + "\n"


def plot_report(rep: dict, path) -> str | None:
    """Images side by side (float first, then every variant; first frame) and the per-step error curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: trajectory.png skipped (pip install matplotlib)"
    from .report import backend_colors

    images = rep.get("_images") or {}
    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    n_img = len(images)
    cols = min(6, max(1, n_img))
    img_rows = max(1, math.ceil(n_img / cols))
    fig = plt.figure(figsize=(2.3 * cols + 0.5, 2.4 * img_rows + 3.6))
    gs = fig.add_gridspec(img_rows + 1, cols, height_ratios=[1.0] * img_rows + [1.5])
    by_label = {f"{r['scheme']}@{r['backend']}": r for r in ok}
    for i, (label, fr) in enumerate(images.items()):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        ax.imshow(fr[0])
        ax.set_xticks([])
        ax.set_yticks([])
        r = by_label.get(label)
        sub = "float reference" if r is None else \
            f"psnr {r['output_metrics']['all_frames_metrics']['psnr_db']:.1f} dB"
        ax.set_title(f"{label}\n{sub}", fontsize=7)
    ax = fig.add_subplot(gs[img_rows, :])
    colors = backend_colors([r["backend"] for r in ok])
    styles = ["-", "--", ":", "-."]
    schemes = list(dict.fromkeys(r["scheme"] for r in ok))
    for r in ok:
        ys = [max(p["relative_l2"], 1e-12) for p in r["per_step"]]
        ax.plot(range(1, len(ys) + 1), ys, styles[schemes.index(r["scheme"]) % len(styles)], marker="o", ms=3,
                color=colors[r["backend"]], label=f"{r['scheme']}@{r['backend']}")
    ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("denoising step")
    ax.set_ylabel("latent relative L2 vs float")
    ax.grid(True, alpha=0.3)
    if ok:
        ax.legend(fontsize=6, ncol=max(1, math.ceil(len(ok) / 8)), loc="best")
    fig.suptitle(f"{rep['pipeline_class']}: float vs quantized, same prompt / seed / steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return None


def _json_clean(o):
    from .report import _clean

    return _clean(o)


def write_report(rep: dict, out_dir, *, plot: bool = True) -> list[str]:
    """Write ``trajectory.json``, ``trajectory.md`` and (matplotlib) ``trajectory.png``; returns messages."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in rep.items() if not k.startswith("_")}
    (out / "trajectory.json").write_text(json.dumps(_json_clean(data), indent=2, allow_nan=False), encoding="utf-8")
    (out / "trajectory.md").write_text(to_markdown(rep), encoding="utf-8")
    msgs = []
    if plot:
        m = plot_report(rep, out / "trajectory.png")
        if m:
            msgs.append(m)
    return msgs
