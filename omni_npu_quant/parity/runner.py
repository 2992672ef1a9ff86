"""Run one parity comparison: every backend, every quantized layer, then end to end.

Per layer, the input captured from the float model is fed unchanged to each backend's prepared
layer, so a layer's numbers isolate that layer: ``quantize_activation`` bytes against the
reference's, the output against the reference's and against the float layer's, and the median
latency of ``apply``.  End to end, every quantized linear of the float model is swapped for the
backend's prepared layer and the whole model runs on the same inputs.
"""
from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
import traceback

import torch
from torch import nn

from ..backends.base import FALLBACK, NATIVE, UNSUPPORTED
from ..numerics.gemm import mx_matmul
from ..schemes.base import apply_mul_scale
from .backends import BackendStatus
from .metrics import compare, compare_bytes
from .source import ParitySource, capture_linear_io, float_weight
from .thresholds import FLOAT_FLOORS, THRESHOLDS, TIERS, e2e_failures, exactness, layer_failures, layer_semantics

__all__ = ["run_parity", "PreparedModule"]


class PreparedModule(nn.Module):
    """A float linear's stand-in that runs a backend's prepared layer (moving data to its device)."""

    def __init__(self, status: BackendStatus, prepared):
        super().__init__()
        self.status = status
        self.prepared = prepared

    def forward(self, x):
        dev = self.status.device
        y = self.status.backend.apply(self.prepared, x.to(dev))
        return y.to(x.device)


def weight_only_linear(entry, x: torch.Tensor, act_dtype: torch.dtype, add_bias: bool = True) -> torch.Tensor:
    """The oracle of a weight-only fallback: unquantized activations (``mul_scale`` applied and
    rounded to the activation dtype) times the exactly dequantized weight, fp32 accumulation."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(act_dtype)
    w = entry.scheme.dequantize_weight(entry.tensors, entry.in_features())
    b = entry.tensors.get("bias") if add_bias else None
    xs = apply_mul_scale(x2, entry.tensors.get("mul_scale"))
    return mx_matmul(xs.to(torch.float32), w, b).to(act_dtype).reshape(*lead, w.shape[0])


class _OracleModule(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "npu" and hasattr(torch, "npu"):
        torch.npu.synchronize()


def _timed(fn, dev: torch.device, repeat: int) -> tuple[object, float]:
    """(result of the first call, median ms of ``repeat`` calls after it)."""
    out = fn()
    _sync(dev)
    times = []
    for _ in range(max(0, repeat)):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    return out, (statistics.median(times) if times else float("nan"))


def _to_dev(tensors: dict, dev: torch.device) -> dict:
    if dev.type == "cpu":
        return dict(tensors)
    return {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in tensors.items()}


def _cpu(d: dict) -> dict:
    return {k: v.detach().cpu() for k, v in d.items() if isinstance(v, torch.Tensor)}


def run_parity(src: ParitySource, statuses: list[BackendStatus], *, repeat: int = 3, end_to_end: bool = True,
               log=None, progress=None) -> dict:
    """Compare every available backend with the reference and the float model; returns the report dict.

    ``progress(step: str)``, if given, is called after each (layer, backend) and each end-to-end backend
    run (e.g. a tqdm bar's update); the per-layer summary line then goes to it instead of ``log``."""
    log = log or (lambda msg: None)
    ref_status = next((s for s in statuses if s.name == "reference" and s.available), None)
    if ref_status is None:
        raise RuntimeError("parity needs the reference backend")
    avail = [s for s in statuses if s.available]
    # ---- float run with capture -------------------------------------------------------------
    names = list(src.layers)
    if src.model is not None:
        xs, ys_float, y_float = capture_linear_io(src.model, src.inputs, names)
    else:
        xs = dict(src.synthetic_inputs)
        ys_float = {}
        for n, e in src.layers.items():
            w = float_weight(e)  # mul_scale / smooth_factor on the residual, an SVD branch on the raw input
            b = e.tensors.get("bias")
            yf = xs[n].float() @ w.T + (0 if b is None else b.float())
            ys_float[n] = yf.to(src.act_dtype)
        y_float = None

    schemes = {e.scheme.name: e.scheme for e in src.layers.values()}
    backends_json = []
    for s in statuses:
        j = s.to_json()
        if s.available:
            j["modes"] = {}
            for sn, sch in schemes.items():
                cap = s.backend.capability(sch)
                j["modes"][sn] = {"mode": cap.mode, "reason": cap.reason}
        backends_json.append(j)

    prepared: dict[str, dict[str, object]] = {s.name: {} for s in avail}
    layers_json = []
    ref_q_cache: dict[str, dict] = {}
    for n, e in src.layers.items():
        x = xs[n]
        k = e.in_features()
        n_out = int(ys_float[n].shape[-1])
        entry = {"name": n, "scheme": e.scheme.name, "label": e.label or e.scheme.label, "n": n_out, "k": int(k),
                 "tokens": int(x.shape[0]), "exactness": exactness(e.scheme.name), "results": {}}
        ref_y = None
        ref_q = None
        for s in [ref_status] + [t for t in avail if t is not ref_status]:
            r: dict = {}
            cap = s.backend.capability(e.scheme)
            r["mode"] = cap.mode
            if cap.mode == UNSUPPORTED:
                r["status"] = "unsupported"
                r["reason"] = cap.reason
                entry["results"][s.name] = r
                continue
            try:
                p = s.backend.prepare(e.scheme, _to_dev(e.tensors, s.device), src.act_dtype, k=k, where=n)
            except ValueError as ex:
                if s is ref_status:  # the tensor set itself is bad: an error of this layer
                    r["status"] = "error"
                    r["error"] = f"{type(ex).__name__}: {ex}"
                    entry["results"][s.name] = r
                    log(f"  {n} [reference]: ERROR {r['error']}")
                    continue
                # a backend's documented guard (shape / dtype limits of its kernels): reported, not failed
                r["status"] = "refused"
                r["reason"] = f"{type(ex).__name__}: {ex}"
                entry["results"][s.name] = r
                log(f"  {n} [{s.name}]: refused: {ex}")
                continue
            try:
                xd = x.to(s.device)
                q = _cpu(s.backend.quantize_activation(p, xd))
                y, ms = _timed(lambda: s.backend.apply(p, xd), s.device, repeat)
                y = y.detach().cpu()
            except Exception as ex:  # noqa: BLE001 - reported per layer, and a failure of both tiers
                r["status"] = "error"
                r["error"] = f"{type(ex).__name__}: {ex}"
                r["traceback"] = traceback.format_exc(limit=4)
                entry["results"][s.name] = r
                log(f"  {n} [{s.name}]: ERROR {r['error']}")
                continue
            r["status"] = "ok"
            prepared[s.name][n] = p
            r["latency_ms"] = ms
            if getattr(p, "notes", None):
                r["notes"] = list(p.notes)
            if s is ref_status:
                ref_y, ref_q = y, q
                ref_q_cache[n] = q
            else:
                if ref_q and not q:  # the kernel keeps activations in float (weight-only, e.g. MX on A2/A3)
                    r["quant"] = None
                    r["quant_note"] = "activations not quantized by this kernel (weight-only semantics)"
                else:
                    r["quant"] = compare_bytes(q, ref_q) if ref_q is not None else None
                r["vs_reference"] = compare(y, ref_y) if ref_y is not None else None
                if cap.mode == FALLBACK or getattr(p, "mode", NATIVE) == FALLBACK:
                    r["mode"] = FALLBACK
                    r["vs_weight_only"] = compare(y, weight_only_linear(e, x, src.act_dtype))
                r["semantics"] = layer_semantics(e.scheme.name, r, src.act_dtype)
            r["vs_float"] = compare(y, ys_float[n])
            entry["results"][s.name] = r
            if progress is not None:
                progress(f"{n} [{s.name}]")
        layers_json.append(entry)
        if progress is None:
            log(f"  {n}: " + ", ".join(
                f"{b}={'ok' if rr.get('status') == 'ok' else rr.get('status')}" for b, rr in entry["results"].items()))

    # ---- end to end ---------------------------------------------------------------------------
    e2e: dict[str, dict] = {}
    if end_to_end and src.model is not None:
        ref_out = None
        for s in [ref_status] + [t for t in avail if t is not ref_status]:
            r: dict = {}
            missing = [n for n in src.layers if n not in prepared[s.name]]
            if missing:
                r["status"] = "skipped"
                r["reason"] = f"{len(missing)} layer(s) not runnable on {s.name} (e.g. {missing[0]})"
                e2e[s.name] = r
                continue
            try:
                out, ms = _run_swapped(src, {n: PreparedModule(s, prepared[s.name][n]) for n in src.layers},
                                       s.device, repeat)
            except Exception as ex:  # noqa: BLE001
                r["status"] = "error"
                r["error"] = f"{type(ex).__name__}: {ex}"
                e2e[s.name] = r
                continue
            r["status"] = "ok"
            r["latency_ms"] = ms
            r["vs_float"] = _e2e_compare(out, y_float, src.image_like)
            if s is ref_status:
                ref_out = out
            else:
                r["vs_reference"] = _e2e_compare(out, ref_out, src.image_like)
                # layers that follow the weight-only oracle (exact fallbacks): the end-to-end oracle is the
                # float model with exactly those layers weight-only and the others on the reference
                wo = [L["name"] for L in layers_json if L["results"].get(s.name, {}).get("semantics") == "weight-only"]
                if wo:
                    mods_o = {}
                    for n, e in src.layers.items():
                        if n in wo:
                            mods_o[n] = _OracleModule(lambda x, e=e: weight_only_linear(e, x, src.act_dtype))
                        else:
                            mods_o[n] = PreparedModule(ref_status, prepared["reference"][n])
                    o_out, _ = _run_swapped(src, mods_o, torch.device("cpu"), 0)
                    r["oracle"] = f"{len(wo)} weight-only layer(s), the rest reference"
                    r["vs_oracle"] = _e2e_compare(out, o_out, src.image_like)
            e2e[s.name] = r
            if progress is not None:
                progress(f"end to end [{s.name}]")
        # float model latency, for scale
        _, fms = _timed(lambda: _model_out(src.model, src.inputs), torch.device("cpu"), repeat)
        e2e_float_ms = fms
    else:
        e2e_float_ms = None

    report = {
        "tool": "omni-npu-quant parity",
        "format_version": 1,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                 "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "source": {"description": src.description, "float_reference": src.float_reference,
                   "image_like": src.image_like, "act_dtype": str(src.act_dtype).replace("torch.", ""),
                   "inputs": None if src.inputs is None else {"shape": list(src.inputs.shape),
                                                               "dtype": str(src.inputs.dtype).replace("torch.", "")},
                   "skipped_layers": src.skipped},
        "backends": backends_json,
        "layers": layers_json,
        "end_to_end": e2e,
        "float_latency_ms": e2e_float_ms,
        "thresholds": {"tiers": THRESHOLDS, "float_floors": FLOAT_FLOORS},
    }
    report["verdict"] = verdict(report, src.act_dtype)
    return report


def _e2e_compare(out, ref, image_like):
    m = compare(out, ref)
    if not image_like and out.dim() >= 2:
        m["top1_agree"] = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    return m


def _run_swapped(src: ParitySource, modules: dict, dev: torch.device, repeat: int):
    """Run the model with the named linears replaced by ``modules``; restore them afterwards."""
    mods = dict(src.model.named_modules())
    saved = {}
    try:
        for n, m in modules.items():
            parent_name, _, child = n.rpartition(".")
            parent = mods[parent_name] if parent_name else src.model
            saved[n] = (parent, child, getattr(parent, child))
            setattr(parent, child, m)
        with torch.no_grad():
            out, ms = _timed(lambda: _model_out(src.model, src.inputs), dev, repeat)
    finally:
        for n, (parent, child, mod) in saved.items():
            setattr(parent, child, mod)
    return out.detach().cpu(), ms


def _model_out(model, inputs):
    y = model(inputs)
    if isinstance(y, (tuple, list)):
        y = y[0]
    if hasattr(y, "logits"):
        y = y.logits
    elif hasattr(y, "last_hidden_state"):  # encoders (BertModel ...): the hidden states are the output
        y = y.last_hidden_state
    return y


def verdict(report: dict, out_dtype: torch.dtype) -> dict:
    """Pass/fail per tier: {tier: {"pass": bool, "failures": [str, ...]}}."""
    res = {}
    schemes_used = sorted({L["scheme"] for L in report["layers"]})
    e2e_scheme = min(schemes_used, key=lambda s: FLOAT_FLOORS.get(s, {"e2e": 0})["e2e"]) if schemes_used else ""
    for tier in TIERS:
        fails: list[str] = []
        for L in report["layers"]:
            for b, r in L["results"].items():
                if r.get("status") == "error":
                    fails.append(f"{L['name']} [{b}]: {r['error']}")
                    continue
                for w in layer_failures(tier, L["scheme"], r, out_dtype, is_reference=(b == "reference")):
                    fails.append(f"{L['name']} [{b}]: {w}")
        for b, r in report["end_to_end"].items():
            if r.get("status") == "error":
                fails.append(f"end to end [{b}]: {r['error']}")
                continue
            for w in e2e_failures(tier, e2e_scheme, r, report["end_to_end"].get("reference"),
                                  is_reference=(b == "reference")):
                fails.append(f"[{b}]: {w}")
        res[tier] = {"pass": not fails, "failures": fails}
    return res
