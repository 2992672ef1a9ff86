"""``quantize_`` (online, from float weights), ``load_quantized`` (apply a checkpoint) and the plan.

Both replace ``nn.Linear`` modules in place with ``QuantLinear``; every other module is untouched,
so any ``nn.Module`` works (transformers, diffusers, the built-in tiny models).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ...schemes.base import Scheme
from ...schemes.registry import LABEL_TO_SCHEME, get_scheme
from ..selection import SelectionError, compile_pattern, leading_blocks, match_patterns, resolve_layer_choice
from .config import FLOAT, QuantConfig
from .module import QuantLinear

__all__ = ["LayerPlan", "plan_quantization", "format_plan", "quantize_", "load_quantized", "linear_names",
           "collect_act_ranges", "quantized_tensor_sets"]

log = logging.getLogger("omni_npu_quant.integrations.torch")


@dataclass
class LayerPlan:
    name: str
    in_features: int
    out_features: int
    scheme: str | None  # None = kept in float
    options: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def quantized(self) -> bool:
        return self.scheme is not None


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _scheme_spec(value, default_options: dict | None = None) -> tuple[str | None, dict]:
    if value is None:
        return None, {}
    if isinstance(value, Mapping):
        v = dict(value)
        name = v.pop("scheme", None)
        if not name:
            raise ValueError(f"layer_schemes: a dict value needs a 'scheme' key, got {value!r}")
        return (None, {}) if str(name).lower() == FLOAT else (str(name), v)
    name = str(value)
    if name.lower() == FLOAT:
        return None, {}
    return name, dict(default_options or {})


def _make_scheme(name: str, options: dict, where: str) -> Scheme:
    try:
        return get_scheme(name, **options)
    except TypeError as e:
        raise ValueError(f"{where}: bad options {options} for scheme {name!r}: {e}") from None


def incompatibility(scheme: Scheme, n: int, k: int) -> str | None:
    """Why ``scheme`` cannot store an (N, K) linear, or None."""
    return scheme.shape_problem(n, k)


def plan_quantization(model: nn.Module, config: QuantConfig) -> list[LayerPlan]:
    """Decide, without touching weights, which scheme every ``nn.Linear`` of ``model`` gets."""
    if isinstance(config, Mapping):
        config = QuantConfig.from_dict(dict(config))
    mods = dict(model.named_modules())
    names = linear_names(model)
    if not names:
        raise SelectionError(f"{type(model).__name__} has no nn.Linear layer to quantize")
    ignored_hits = match_patterns(config.ignored_layers, names, what="ignored_layers")
    ignored = {n: p for p, hits in ignored_hits.items() for n in hits}
    match_patterns(list(config.layer_schemes), names, what="layer_schemes")
    compiled = [(compile_pattern(p, what="layer_schemes"), v) for p, v in config.layer_schemes.items()]
    first = leading_blocks(names, int(config.keep_first_blocks))
    from ...models.defaults import kept_float_by_defaults  # per-architecture float layers (one table)

    arch_float = kept_float_by_defaults(model, names, config)
    default_name, default_opts = _scheme_spec(config.scheme, config.scheme_options)
    if default_name is not None:
        _make_scheme(default_name, default_opts, "QuantConfig.scheme")  # fail early on a bad name
    plan: list[LayerPlan] = []
    for n in names:
        lin = mods[n]
        k, nout = lin.in_features, lin.out_features
        if n in ignored:
            plan.append(LayerPlan(n, k, nout, None, reason=f"ignored_layers: {ignored[n]!r}"))
            continue
        hit = resolve_layer_choice(n, compiled)
        if hit is not None:
            name, opts = _scheme_spec(hit[1])
            if name is None:
                plan.append(LayerPlan(n, k, nout, None, reason=f"layer_schemes: {hit[0].text!r} -> float"))
                continue
            sch = _make_scheme(name, opts, f"layer_schemes[{hit[0].text!r}]")
            why = incompatibility(sch, nout, k)
            if why:
                raise SelectionError(f"layer_schemes[{hit[0].text!r}] selects {n} for {sch.name}, but {why}")
            plan.append(LayerPlan(n, k, nout, sch.name, opts, reason=f"layer_schemes: {hit[0].text!r}"))
            continue
        if n in arch_float:
            plan.append(LayerPlan(n, k, nout, None, reason=arch_float[n]))
            continue
        if n in first:
            plan.append(LayerPlan(n, k, nout, None, reason=f"keep_first_blocks={config.keep_first_blocks}"))
            continue
        if default_name is None:
            plan.append(LayerPlan(n, k, nout, None, reason="default scheme is float"))
            continue
        sch = _make_scheme(default_name, default_opts, "QuantConfig.scheme")
        why = incompatibility(sch, nout, k)
        if why:
            if not config.skip_incompatible:
                raise SelectionError(f"{n}: scheme {sch.name} does not apply: {why} (ignore the layer or set "
                                     f"skip_incompatible=True)")
            plan.append(LayerPlan(n, k, nout, None, reason=f"kept float: {why}"))
            continue
        plan.append(LayerPlan(n, k, nout, sch.name, default_opts, reason="default"))
    return plan


def format_plan(plan: list[LayerPlan]) -> str:
    w = max(len(p.name) for p in plan)
    lines = [f"{'layer'.ljust(w)}  {'(N, K)':>13}  {'scheme':<14} reason"]
    for p in plan:
        shape = f"({p.out_features}, {p.in_features})"
        lines.append(f"{p.name.ljust(w)}  {shape:>13}  {(p.scheme or 'float'):<14} {p.reason}")
    nq = sum(p.quantized for p in plan)
    lines.append(f"{nq} of {len(plan)} linear layers quantized")
    return "\n".join(lines)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _call(model: nn.Module, batch):
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def collect_act_ranges(model: nn.Module, names: Iterable[str], calib_data) -> dict[str, tuple[float, float]]:
    """(min, max) of every named linear's input over ``calib_data`` (a batch or an iterable of batches)."""
    names = list(names)
    ranges: dict[str, list[float]] = {}
    hooks = []
    for n in names:
        def hook(mod, args, _n=n):
            x = args[0].detach().float()
            lo, hi = float(x.min()), float(x.max())
            r = ranges.setdefault(_n, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        batches = [calib_data] if isinstance(calib_data, (torch.Tensor, Mapping, tuple)) else calib_data
        for b in batches:
            _call(model, b)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in ranges]
    if missing:
        raise RuntimeError(f"calibration data never reached layer(s) {missing[:5]}")
    return {n: (r[0], r[1]) for n, r in ranges.items()}


def quantize_(model: nn.Module, config: QuantConfig | Mapping | str = "mxfp4", *, calib_data=None,
              act_ranges: Mapping[str, tuple[float, float]] | None = None,
              backend=None, progress=None) -> nn.Module:
    """Quantize ``model``'s ``nn.Linear`` layers in place (online, from their float weights).

    ``w8a8_static`` layers need activation ranges: ``act_ranges={name: (min, max)}`` or ``calib_data``
    (batches fed to ``model(...)`` before quantization).  ``progress``: optional wrapper of the list of
    layers to quantize (e.g. ``lambda it: tqdm(it)``; the CLI's bar).  Returns ``model``.
    """
    if isinstance(config, str):
        config = QuantConfig(scheme=config)
    elif isinstance(config, Mapping):
        config = QuantConfig.from_dict(dict(config))
    backend = backend if backend is not None else config.backend
    plan = plan_quantization(model, config)
    static = [p.name for p in plan if p.quantized and get_scheme(p.scheme, **p.options).needs_calibration]
    ranges = dict(act_ranges or {})
    need = [n for n in static if n not in ranges]
    if need:
        if calib_data is None:
            raise ValueError(f"w8a8_static needs calibration for {len(need)} layer(s) (e.g. {need[0]}): pass "
                             f"act_ranges={{name: (min, max)}} or calib_data=...")
        ranges.update(collect_act_ranges(model, need, calib_data))
    mods = dict(model.named_modules())
    todo = [p for p in plan if p.quantized]
    if not todo:
        reasons = sorted({p.reason for p in plan})
        log.warning("quantize_: no layer of %s was quantized (%d linear layers kept float: %s)",
                    type(model).__name__, len(plan), "; ".join(reasons[:4]) + ("; ..." if len(reasons) > 4 else ""))
    for p in (progress(todo) if progress is not None else todo):
        lin: nn.Linear = mods.pop(p.name)  # no reference kept: the float weight is freed once replaced
        scheme = get_scheme(p.scheme, **p.options)
        calib = {}
        if p.name in ranges:
            calib = {"act_min": ranges[p.name][0], "act_max": ranges[p.name][1]}
        w = lin.weight.detach()
        b = None if lin.bias is None else lin.bias.detach()
        tensors = scheme.quantize_weight_rows(w, b, **calib)  # bounded temporaries per layer
        act_dtype = w.dtype if w.is_floating_point() else torch.bfloat16
        del w, b, lin
        _set_module(model, p.name, QuantLinear(scheme, tensors, backend=backend, act_dtype=act_dtype, name=p.name,
                                               k=p.in_features))
    model.omni_npu_quant_config = config.to_dict()
    record_layers(model)
    return model


RECORD_KEY = "omni_npu_quant"  # config entry naming every quantized layer's label (state_dict / save_pretrained)


def layer_record(model: nn.Module) -> dict:
    """``{"format": 1, "layers": {prefix: {"label", "k", "options"}}}`` of the model's ``QuantLinear`` modules."""
    layers = {}
    for n, m in model.named_modules():
        if isinstance(m, QuantLinear):
            opts = {k: v for k, v in m.scheme.describe().items() if k not in ("name", "label")}
            layers[n] = {"label": m.scheme.label, "k": m.in_features, "options": opts}
    return {"format": 1, "layers": layers}


def record_layers(model: nn.Module) -> None:
    """Record the layer labels in the model's config (transformers ``PretrainedConfig`` or diffusers
    ``register_to_config``) so that ``save_pretrained`` writes them into config.json and ``load_quantized``
    can read the saved state dict back.  Models without a config keep the record on the module."""
    rec = layer_record(model)
    model.omni_npu_quant_layers = rec
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    if hasattr(model, "register_to_config"):  # diffusers ModelMixin / ConfigMixin
        model.register_to_config(**{RECORD_KEY: rec})
    else:
        try:
            setattr(cfg, RECORD_KEY, rec)
        except (AttributeError, TypeError):
            pass


def quantized_tensor_sets(model: nn.Module) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """``{prefix: (label, tensors)}`` of every ``QuantLinear`` (the writer's input)."""
    return {n: (m.scheme.label, {k: v.detach().cpu() for k, v in m.tensors.items()})
            for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _saved_record(path: Path) -> dict | None:
    """The layer record of a ``save_pretrained`` directory (config.json's ``omni_npu_quant``), or None."""
    import json

    cfg = path / "config.json"
    if not cfg.is_file() or any(path.glob("quant_model_description*.json")):
        return None
    try:
        rec = json.loads(cfg.read_text()).get(RECORD_KEY)
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg}: unreadable config ({e})") from None
    return rec if isinstance(rec, dict) else None


def _from_state_dict(sd: dict, record: dict, src: str):
    """(layers, float tensors) of a state dict whose quantized layers a layer record names."""
    layers_rec = record.get("layers")
    if record.get("format") != 1 or not isinstance(layers_rec, dict):
        raise ValueError(f"{src}: the '{RECORD_KEY}' layer record is malformed (format {record.get('format')!r})")
    layers, used = _Layers(), set()
    for prefix, info in layers_rec.items():
        if not isinstance(info, dict) or "label" not in info:
            raise ValueError(f"{src}: layer record entry {prefix!r} has no label")
        head = prefix + "."
        tensors = {k[len(head):]: v for k, v in sd.items() if k.startswith(head) and "." not in k[len(head):]}
        if "weight" not in tensors:
            raise ValueError(f"{src}: recorded quantized layer '{prefix}' ({info['label']}) has no '{head}weight'")
        used.update(head + s for s in tensors)
        layers[prefix] = (LABEL_TO_SCHEME.get(info["label"], info["label"]), tensors, info.get("k"))
        layers.options[prefix] = dict(info.get("options") or {})
    return layers, {k: v for k, v in sd.items() if k not in used}


class _Layers(dict):
    """{prefix: (scheme_name, tensors, k)} plus the per-layer scheme options of a layer record."""

    def __init__(self):
        super().__init__()
        self.options: dict[str, dict] = {}


def _entries(ckpt, record: dict | None = None) -> tuple[dict[str, tuple[str, dict, int | None]], dict[str, torch.Tensor]]:
    """Normalize a checkpoint source to ({prefix: (scheme_name, tensors, k)}, float_tensors)."""
    if isinstance(ckpt, (str, Path)):
        from ...checkpoint import load_checkpoint

        rec = _saved_record(Path(ckpt))
        if rec is not None:  # a save_pretrained directory of a quantized model
            from safetensors.torch import load_file

            files = sorted(Path(ckpt).glob("*.safetensors"))
            if not files:
                raise ValueError(f"{ckpt}: config.json records quantized layers but there is no *.safetensors file")
            sd: dict = {}
            for f in files:
                sd.update(load_file(str(f)))
            return _from_state_dict(sd, rec, str(ckpt))
        ckpt = load_checkpoint(ckpt)
    if hasattr(ckpt, "layers") and hasattr(ckpt, "float_tensors"):
        layers = {p: (e.scheme_name, e.tensors, getattr(e, "k", None)) for p, e in ckpt.layers.items()}
        return layers, dict(ckpt.float_tensors)
    if isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        if record is None:
            raise ValueError("load_quantized: a plain state dict needs the layer record (the 'omni_npu_quant' entry "
                             "that quantize_ / load_quantized put in the model's config); pass a checkpoint directory, "
                             "or a model whose config carries it")
        return _from_state_dict(dict(ckpt), record, "state dict")
    if isinstance(ckpt, Mapping):
        layers = {}
        for p, v in ckpt.items():
            if hasattr(v, "scheme_name"):
                layers[p] = (v.scheme_name, v.tensors, getattr(v, "k", None))
            else:
                label, tensors = v
                layers[p] = (LABEL_TO_SCHEME.get(label, label), tensors, None)
        return layers, {}
    raise TypeError(f"load_quantized: unsupported checkpoint source {type(ckpt).__name__}")


def load_quantized(model: nn.Module, ckpt_dir, backend=None, *, strict: bool = True,
                   scheme_options: Mapping[str, dict] | None = None) -> nn.Module:
    """Apply a quantized checkpoint to ``model`` in place.

    ``ckpt_dir``: an msModelSlim / omni_npu_quant checkpoint directory (or the pipeline layout
    ``transformer/`` + ``transformer_2/`` of ``quantize`` / ``calibrate`` on a diffusers pipeline, applied
    to the pipeline's modules of those names), a ``QuantizedCheckpoint``, or a
    dict ``{prefix: (label_or_scheme, tensors)}``.  Quantized layers replace the model's ``nn.Linear``
    of the same name (shapes must agree); float tensors (norms, embeddings, FLOAT linears) are copied
    into the model's parameters.  With ``strict`` a checkpoint tensor with no home in the model is an
    error.  ``scheme_options``: ``{scheme_name: {option: value}}`` (e.g. activation round modes).
    """
    if isinstance(ckpt_dir, (str, Path)):
        from ...models.loading import pipeline_layout

        if layout := pipeline_layout(ckpt_dir):  # pipeline layout (docs/diffusion.md): one checkpoint per transformer
            for sub, path in layout.items():
                part = getattr(model, sub, None)
                if not isinstance(part, nn.Module):
                    raise ValueError(f"{ckpt_dir}: holds quantized {sorted(layout)}, but {type(model).__name__} has "
                                     f"no '{sub}' module; pass the pipeline, or the subfolder for one transformer")
                load_quantized(part, path, backend, strict=strict, scheme_options=scheme_options)
            return model
    layers, float_tensors = _entries(ckpt_dir, _model_record(model))
    rec_opts = getattr(layers, "options", {})
    src = str(ckpt_dir) if isinstance(ckpt_dir, (str, Path)) else "checkpoint"
    mods = dict(model.named_modules())
    problems = []
    for prefix, (scheme_name, tensors, k) in layers.items():
        mod = mods.get(prefix)
        if mod is None:
            problems.append(f"layer '{prefix}' has no module in {type(model).__name__}")
        elif not isinstance(mod, (nn.Linear, QuantLinear)):
            problems.append(f"layer '{prefix}' is a {type(mod).__name__} in the model, not a Linear")
    if problems:
        raise ValueError(f"{src}: " + "; ".join(problems[:10]))
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    unknown = [k for k in float_tensors if k not in state]
    if unknown and strict:
        raise ValueError(f"{src}: float tensor(s) {unknown[:8]} have no parameter in {type(model).__name__} "
                         f"(pass strict=False to skip them)")
    with torch.no_grad():
        for key, t in float_tensors.items():
            if key not in state:
                log.warning("%s: skipping float tensor %s (no such parameter)", src, key)
                continue
            if tuple(state[key].shape) != tuple(t.shape):
                raise ValueError(f"{src}: float tensor '{key}' has shape {list(t.shape)}, the model's parameter "
                                 f"has {list(state[key].shape)}")
            state[key].copy_(t.to(state[key].device))
    opts = dict(scheme_options or {})
    for prefix, (scheme_name, tensors, k) in layers.items():
        mod = mods[prefix]
        layer_opts = dict(rec_opts.get(prefix, {}))  # options recorded with a saved state dict (e.g. round modes)
        layer_opts.update(opts.get(scheme_name, {}))
        scheme = get_scheme(scheme_name, **layer_opts)
        n_expect, k_expect = mod.out_features, mod.in_features
        n, kk = scheme.validate(tensors, k=k, where=f"{src}: {prefix}")
        if (n, kk) != (n_expect, k_expect):
            raise ValueError(f"{src}: layer '{prefix}' stores a ({n}, {kk}) weight, the model's Linear is "
                             f"({n_expect}, {k_expect})")
        if isinstance(mod, QuantLinear):
            act_dtype, dev = mod.act_dtype, mod.tensors["weight"].device
        else:
            act_dtype = mod.weight.dtype if mod.weight.is_floating_point() else torch.bfloat16
            dev = mod.weight.device
        t = {kk_: v.to(dev) for kk_, v in tensors.items()}
        _set_module(model, prefix, QuantLinear(scheme, t, backend=backend, act_dtype=act_dtype, name=prefix, k=kk))
    record_layers(model)
    return model


def _model_record(model: nn.Module) -> dict | None:
    rec = getattr(model, "omni_npu_quant_layers", None)
    if rec is None:
        cfg = getattr(model, "config", None)
        rec = cfg.get(RECORD_KEY) if isinstance(cfg, Mapping) else getattr(cfg, RECORD_KEY, None)
    return rec if isinstance(rec, dict) else None
