"""Loading a model directory: the one place that decides what a ``--model DIR`` is and builds it.

Accepted layouts (``detect``):

* **diffusers pipeline** -- ``model_index.json`` whose components include ``transformer`` (and, for
  Wan2.2 A14B, ``transformer_2``), each a subfolder with its own ``config.json``;
* **diffusers model** -- ``config.json`` with ``_class_name`` (e.g. ``WanTransformer3DModel``);
* **transformers model** -- ``config.json`` with ``architectures`` (or ``model_type``).

The class always comes from the config (``_class_name``, ``architectures[0]``): an encoder such as
``BertModel`` stays an encoder, a causal LM is loaded as one -- nothing is silently given a new head.
The stored dtype is kept: with no ``dtype`` requested, the dtype is the config's ``torch_dtype`` /
``dtype`` or else the dominant floating dtype of the safetensors headers, so a bf16 model loads as
bf16 (diffusers otherwise builds fp32).  A diffusers class's ``_keep_in_fp32_modules`` stay fp32.

Quantized output layout for a pipeline (written by ``quantize`` and ``calibrate``; read by
``inspect``, ``parity``, ``load_quantized``)::

    OUT/model_index.json          copied from the pipeline (names the components and classes)
    OUT/transformer/              an AscendV1 checkpoint of the pipeline's transformer
    OUT/transformer_2/            ... of transformer_2 (Wan2.2 A14B's low-noise expert), if present

Each subfolder is a complete checkpoint (description JSON, safetensors, the transformer's
``config.json``); the other components (VAE, text encoder, tokenizer, scheduler) are not copied:
they are not quantized and are taken from the original pipeline.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["ModelLoadError", "LoadedDir", "detect", "pipeline_transformers", "stored_dtype", "load_dir",
           "load_components", "model_from_config", "quantized_layout", "pipeline_layout", "is_quantized_dir",
           "quiet_third_party", "DIFFUSERS_PIPELINE", "DIFFUSERS_MODEL", "TRANSFORMERS"]

DIFFUSERS_PIPELINE = "diffusers-pipeline"
DIFFUSERS_MODEL = "diffusers"
TRANSFORMERS = "transformers"
# the pipeline components that are denoising transformers (diffusers' names: transformer, transformer_2)
_TRANSFORMER_KEY = re.compile(r"^transformer(_\d+)?$")
_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
_CFG_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_QUANT_DESC = "quant_model_description*.json"


class ModelLoadError(ValueError):
    """A model directory cannot be loaded; the message names the directory and what is missing."""


@dataclass
class LoadedDir:
    model: nn.Module
    kind: str  # DIFFUSERS_MODEL | TRANSFORMERS
    class_name: str
    path: Path
    dtype: torch.dtype
    config: dict = field(default_factory=dict)


@contextlib.contextmanager
def quiet_third_party():
    """Silence diffusers / transformers info chatter and progress bars while loading (errors still raise)."""
    saved = []
    for name in ("diffusers", "transformers"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        lg.setLevel(logging.ERROR)
    bars = []
    try:
        from diffusers.utils import logging as dlog

        bars.append((dlog, dlog.are_progress_bars_disabled() if hasattr(dlog, "are_progress_bars_disabled")
                     else False))
        dlog.disable_progress_bar()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*torch_dtype.*")
            yield
    finally:
        for lg, lvl in saved:
            lg.setLevel(lvl)
        for dlog, was_disabled in bars:
            if not was_disabled:
                dlog.enable_progress_bar()


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: {what} must be a JSON object")
    return obj


def detect(path) -> str:
    """``DIFFUSERS_PIPELINE`` | ``DIFFUSERS_MODEL`` | ``TRANSFORMERS`` for a directory, else ``ModelLoadError``."""
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"{p}: not a directory (a model directory needs config.json or model_index.json)")
    if (p / "model_index.json").is_file():
        return DIFFUSERS_PIPELINE
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{p}: no config.json (transformers / diffusers model) and no model_index.json "
                             f"(diffusers pipeline)")
    cfg = _read_json(p / "config.json", "config.json")
    if "_class_name" in cfg:
        return DIFFUSERS_MODEL
    if cfg.get("architectures") or cfg.get("model_type"):
        return TRANSFORMERS
    raise ModelLoadError(f"{p}/config.json: neither '_class_name' (diffusers) nor 'architectures' / 'model_type' "
                         f"(transformers); cannot tell which class to build")


def pipeline_transformers(path) -> list[str]:
    """The transformer subfolders of a diffusers pipeline (``transformer``, ``transformer_2``), in order."""
    p = Path(path)
    idx = _read_json(p / "model_index.json", "model_index.json")
    subs = sorted((k for k, v in idx.items() if _TRANSFORMER_KEY.match(k) and isinstance(v, list)
                   and len(v) == 2 and v[0] is not None and v[1] is not None),
                  key=lambda k: (len(k), k))
    if not subs:
        raise ModelLoadError(f"{p}/model_index.json lists no 'transformer' component (components: "
                             f"{sorted(k for k in idx if not k.startswith('_'))})")
    for s in subs:
        if not (p / s / "config.json").is_file():
            raise ModelLoadError(f"{p}: model_index.json lists '{s}' but {s}/config.json is missing")
    return subs


def _safetensors_files(p: Path) -> list[Path]:
    return sorted(p.glob("*.safetensors"))


def stored_dtype(path) -> torch.dtype | None:
    """The dominant floating dtype of a model directory (config ``torch_dtype`` / ``dtype``, else the
    safetensors headers by element count); ``None`` if neither says."""
    p = Path(path)
    if (p / "config.json").is_file():
        cfg = _read_json(p / "config.json", "config.json")
        for key in ("torch_dtype", "dtype"):
            v = cfg.get(key)
            if isinstance(v, str) and v in _CFG_DTYPES:
                return _CFG_DTYPES[v]
    counts: dict[torch.dtype, int] = {}
    for f in _safetensors_files(p):
        with open(f, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ModelLoadError(f"{f}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ModelLoadError(f"{f}: unreadable safetensors header ({e})") from None
        for key, info in header.items():
            if key == "__metadata__" or not isinstance(info, dict):
                continue
            dt = _ST_DTYPES.get(info.get("dtype"))
            if dt is not None:
                numel = 1
                for s in info.get("shape", []):
                    numel *= int(s)
                counts[dt] = counts.get(dt, 0) + numel
    return max(counts, key=counts.get) if counts else None


def _diffusers_class(name: str, where: Path):
    try:
        import diffusers
    except ImportError as e:
        raise ModelLoadError(f"{where}: a diffusers model ({name}) needs `pip install diffusers` ({e})") from e
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ModelLoadError(f"{where}: diffusers {diffusers.__version__} has no class {name!r} (config _class_name)")
    return cls


def _transformers_class(cfg: dict, where: Path):
    try:
        import transformers
    except ImportError as e:
        raise ModelLoadError(f"{where}: a transformers model needs `pip install transformers` ({e})") from e
    archs = cfg.get("architectures") or []
    if archs:
        cls = getattr(transformers, archs[0], None)
        if cls is None:
            raise ModelLoadError(f"{where}: transformers {transformers.__version__} has no class {archs[0]!r} "
                                 f"(config architectures)")
        return cls, archs[0]
    return transformers.AutoModel, "AutoModel"  # model_type only: the bare model, never a new head


def load_dir(path, *, dtype: torch.dtype | None = None) -> LoadedDir:
    """Build the model stored in a diffusers / transformers *model* directory (not a pipeline)."""
    p = Path(path)
    kind = detect(p)
    if kind == DIFFUSERS_PIPELINE:
        raise ModelLoadError(f"{p} is a diffusers pipeline (model_index.json); load its transformer(s) with "
                             f"load_components, or pass {p}/transformer")
    if is_quantized_dir(p):
        raise ModelLoadError(f"{p} is a quantized checkpoint ({_QUANT_DESC}), not a float model: inspect it, pass "
                             f"it as parity --checkpoint, or apply it with load_quantized")
    cfg = _read_json(p / "config.json", "config.json")
    if not _safetensors_files(p) and not list(p.glob("*.bin")):
        raise ModelLoadError(f"{p}: config.json but no weights (*.safetensors)")
    want = dtype or stored_dtype(p) or torch.float32
    with quiet_third_party():
        if kind == DIFFUSERS_MODEL:
            cls = _diffusers_class(cfg["_class_name"], p)
            name = cfg["_class_name"]
            model = cls.from_pretrained(str(p), torch_dtype=want, local_files_only=True)
        else:
            cls, name = _transformers_class(cfg, p)
            model = cls.from_pretrained(str(p), dtype=want, local_files_only=True)
    return LoadedDir(model.eval(), kind, name, p, want, cfg)


def load_components(path, *, dtype: torch.dtype | None = None) -> dict[str, LoadedDir]:
    """``{subfolder: LoadedDir}``: every transformer of a pipeline, or ``{"": model}`` for a model directory."""
    p = Path(path)
    if detect(p) == DIFFUSERS_PIPELINE:
        return {s: load_dir(p / s, dtype=dtype) for s in pipeline_transformers(p)}
    return {"": load_dir(p, dtype=dtype)}


def model_from_config(cfg: dict, *, dtype: torch.dtype = torch.bfloat16, where: str = "config.json"):
    """A randomly initialised model of the class a config names (diffusers ``_class_name`` or transformers
    ``architectures``), or ``None`` if the config names no class we can build."""
    wp = Path(where)
    with quiet_third_party():
        if "_class_name" in cfg:
            cls = _diffusers_class(cfg["_class_name"], wp)
            keys = set(cls.extract_init_dict(dict(cfg))[0]) if hasattr(cls, "extract_init_dict") else None
            init = {k: v for k, v in cfg.items() if not k.startswith("_") and (keys is None or k in keys)}
            return cls.from_config(init).to(dtype).eval()
        if cfg.get("architectures") or cfg.get("model_type"):
            import transformers

            cls, _ = _transformers_class(cfg, wp)
            mt = cfg.get("model_type")
            if not mt:
                return None
            conf = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "quantization_config"})
            builder = getattr(cls, "_from_config", None) or cls.from_config
            return builder(conf, dtype=dtype).eval()
    return None


def is_quantized_dir(path) -> bool:
    p = Path(path)
    return p.is_dir() and any(p.glob(_QUANT_DESC))


def quantized_layout(path) -> dict[str, Path]:
    """``{subfolder: checkpoint dir}`` of a quantized output: ``{"": path}`` for one checkpoint, or one entry
    per transformer subfolder for the pipeline layout (see the module docstring)."""
    p = Path(path)
    if is_quantized_dir(p):
        return {"": p}
    if not p.is_dir():
        raise ModelLoadError(f"{p}: not a directory")
    subs = {}
    if (p / "model_index.json").is_file():
        idx = _read_json(p / "model_index.json", "model_index.json")
        names = [k for k in idx if _TRANSFORMER_KEY.match(k)]
    else:
        names = [d.name for d in p.iterdir() if d.is_dir() and _TRANSFORMER_KEY.match(d.name)]
    for s in sorted(names, key=lambda k: (len(k), k)):
        if is_quantized_dir(p / s):
            subs[s] = p / s
    if not subs:
        raise ModelLoadError(f"{p}: no quantized checkpoint here (no {_QUANT_DESC}) and no quantized "
                             f"transformer subfolder (transformer/, transformer_2/)")
    return subs


def pipeline_layout(path) -> dict[str, Path]:
    """``{subfolder: checkpoint dir}`` when ``path`` is the quantized *pipeline* layout, else ``{}``
    (a single checkpoint, or not a checkpoint at all: the checkpoint reader reports that)."""
    p = Path(path)
    if not p.is_dir() or is_quantized_dir(p):
        return {}
    try:
        layout = quantized_layout(p)
    except ModelLoadError:
        return {}
    return {} if "" in layout else layout
