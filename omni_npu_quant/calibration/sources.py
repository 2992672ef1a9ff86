"""Where the model and the calibration data come from.

Models (``load_model``):

* ``tiny-llama`` / ``tiny-dit``: the built-in seeded models (``omni_npu_quant.models.build_tiny``);
* a transformers or diffusers model directory (``omni_npu_quant.models.loading``: the class from the
  config's ``architectures`` / ``_class_name``, the stored dtype kept, ``local_files_only``);
* a plain safetensors state dict (a file or a directory of shards) plus ``factory="module:function"``,
  a zero-argument callable returning the ``nn.Module`` the state dict belongs to.

Calibration data (``load_batches``) is a list of *calls*: ``(args, kwargs)`` passed to ``model(...)``.

* ``None``: a built-in default (seeded token ids / latents, or built-in prompts through the tokenizer);
* ``*.txt`` (one prompt per line) or ``*.jsonl`` (``{"text": ...}`` or ``{"prompt": ...}`` per line):
  tokenized with the model directory's tokenizer, or byte-level (UTF-8 bytes) for ``tiny-llama``;
* ``*.safetensors`` of saved inputs: key ``"<i>"`` is the positional input of call ``i``; keys
  ``"<i>.<name>"`` are keyword arguments of call ``i`` (e.g. ``0.hidden_states``, ``0.timestep``),
  ``"<i>.<j>"`` (digits) positional argument ``j``, and a further ``".<m>"`` item ``m`` of a list
  argument (Z-Image takes lists of tensors); non-tensor arguments (``img_shapes``,
  ``return_dict``) are JSON in the file's metadata key ``CALLS_META_KEY``.  This is what
  ``omni_npu_quant.calibration.capture`` writes from a real denoise loop.
* with no ``--calib``, a diffusers DiT of a known class gets seeded example calls
  (``omni_npu_quant.models.dit.example_call``) -- random inputs, for smoke runs only.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["LoadedModel", "Call", "load_model", "load_batches", "DTYPES", "BUILTIN_MODELS", "batches_digest",
           "CALLS_META_KEY"]

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
BUILTIN_MODELS = ("tiny-llama", "tiny-dit")
# safetensors metadata key of saved inputs: JSON {"<i>": {"args": {"<j>": v}, "kwargs": {name: v}}} for the
# non-tensor arguments of call i (e.g. Qwen-Image's img_shapes, return_dict=False)
CALLS_META_KEY = "omni_npu_quant.calls"
# files msModelSlim copies next to the weights (its saver copies *.json, *.py, *.txt, *.jinja)
_COPY_PATTERNS = ("*.json", "*.py", "*.txt", "*.jinja", "*.model")
_COPY_EXCLUDE = re.compile(r"(index\.json$|^quant_model_description.*\.json$)")

# a few neutral English prompts: the default calibration text for language models with a tokenizer
DEFAULT_PROMPTS = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Quantization maps floating point numbers to a small set of values with a shared scale.",
    "In 1969 the first humans landed on the Moon; millions watched the broadcast on television.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "Please summarize the following meeting notes and list three action items for the team.",
    "La tour Eiffel est située à Paris et mesure environ trois cent trente mètres de haut.",
    "A matrix multiplication of shapes (m, k) and (k, n) produces an (m, n) result.",
)

Call = tuple  # (args: tuple, kwargs: dict)


@dataclass
class LoadedModel:
    model: nn.Module
    kind: str  # tiny-llama | tiny-dit | transformers | diffusers | state-dict
    source: str
    dtype: torch.dtype
    tokenize: Callable[[str], list[int]] | None = None
    copy_files: list[Path] = field(default_factory=list)
    config: dict | None = None
    vocab_size: int | None = None
    identity: str = ""  # content digest of the model source (for the recipe hash)


def _sha_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _state_dict_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"--model {path}: expected a .safetensors file or a directory")
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"--model {path}: no *.safetensors files in the directory")
    return files


def _load_factory(factory: str) -> Callable[[], nn.Module]:
    if ":" not in factory:
        raise ValueError(f"--factory {factory!r}: expected 'module:function'")
    mod, fn = factory.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--factory {factory!r}: cannot import ({e})") from e
    if not callable(obj):
        raise ValueError(f"--factory {factory!r} is not callable")
    return obj


def load_model(spec: str, *, factory: str | None = None, dtype: torch.dtype | None = None, seed: int = 0,
               layers: int | None = None) -> LoadedModel:
    """Load the model to calibrate (see the module docstring for the accepted ``spec`` forms)."""
    if spec in BUILTIN_MODELS:
        from ..models import build_tiny

        kind = spec.split("-", 1)[1]
        kw = {} if layers is None else ({"layers": layers} if kind == "llama" else {"blocks": layers})
        m = build_tiny(kind, seed=seed, dtype=dtype or torch.bfloat16, **kw)
        tok = (lambda s: [b % m.config["vocab_size"] for b in s.encode("utf-8")]) if kind == "llama" else None
        return LoadedModel(m, spec, spec, dtype or torch.bfloat16, tokenize=tok, config=dict(m.config),
                           vocab_size=m.config.get("vocab_size"), identity=f"{spec}:seed={seed}:layers={layers}")
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--model {spec!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and no such path")
    if factory is not None:
        files = _state_dict_files(path)
        model = _load_factory(factory)()
        if not isinstance(model, nn.Module):
            raise ValueError(f"--factory {factory!r} returned {type(model).__name__}, not an nn.Module")
        from safetensors.torch import load_file

        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"--model {spec}: state dict does not match the factory's module "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        del sd
        if dtype is not None:
            model = model.to(dtype)
        model.eval()
        cfg = getattr(model, "config", None)
        cfg = dict(cfg) if isinstance(cfg, dict) else None
        d = dtype or next(model.parameters()).dtype
        return LoadedModel(model, "state-dict", spec, d, config=cfg,
                           vocab_size=(cfg or {}).get("vocab_size"), identity=f"sd:{_sha_files(files)}:{factory}")
    from ..models.loading import DIFFUSERS_MODEL, DIFFUSERS_PIPELINE, ModelLoadError, detect, load_dir

    try:
        if path.is_dir() and detect(path) == DIFFUSERS_PIPELINE:
            raise ModelLoadError(f"{path} is a diffusers pipeline; calibrate it with --pipeline {path} "
                                 f"(captures a denoise loop) or pass one transformer, e.g. --model {path}/transformer")
        ld = load_dir(path, dtype=dtype)
    except ModelLoadError as e:
        raise ValueError(f"--model {spec}: {e}; for a plain state dict pass --factory module:function") from None
    cfg = ld.config
    weights = sorted(path.glob("*.safetensors"))
    copy = sorted({p for pat in _COPY_PATTERNS for p in path.glob(pat) if not _COPY_EXCLUDE.search(p.name)})
    ident = f"dir:{_sha_files(weights + [path / 'config.json'])}"
    if ld.kind == DIFFUSERS_MODEL:
        return LoadedModel(ld.model, "diffusers", spec, ld.dtype, copy_files=copy, config=cfg, identity=ident)
    tok = None
    if any((path / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        t = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        tok = lambda s: list(t(s)["input_ids"])  # noqa: E731
    return LoadedModel(ld.model, "transformers", spec, ld.dtype, tokenize=tok, copy_files=copy, config=cfg,
                       vocab_size=cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size"),
                       identity=ident)


# ---------------------------------------------------------------------------------------------
def _read_prompts(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"--calib {path}: line {i} is not JSON ({e})") from e
            if isinstance(obj, str):
                out.append(obj)
            elif isinstance(obj, dict) and isinstance(obj.get("text", obj.get("prompt")), str):
                out.append(obj.get("text", obj.get("prompt")))
            else:
                raise ValueError(f"--calib {path}: line {i} needs a 'text' or 'prompt' string field")
        prompts = out
    else:
        prompts = [ln for ln in text.splitlines() if ln.strip()]
    if not prompts:
        raise ValueError(f"--calib {path}: no prompts found")
    return prompts


def _saved_inputs(path: Path, dtype: torch.dtype) -> list[Call]:
    from safetensors import safe_open

    sd, meta = {}, {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for key in f.keys():
            sd[key] = f.get_tensor(key)
    extra = {}
    if CALLS_META_KEY in meta:
        try:
            extra = json.loads(meta[CALLS_META_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"--calib {path}: metadata {CALLS_META_KEY!r} is not JSON ({e})") from None
    calls: dict[int, list] = {}
    for key in sd:
        m = re.fullmatch(r"(\d+)(?:\.(\w+)(?:\.(\d+))?)?", key)
        if not m:
            raise ValueError(f"--calib {path}: tensor key {key!r} must be '<i>' (positional input of call i), "
                             f"'<i>.<kwarg>', '<i>.<j>' (positional j) or '<name>.<m>' (item m of a list)")
        i = int(m.group(1))
        c = calls.setdefault(i, [{}, {}])
        t = sd[key]
        if t.is_floating_point():
            t = t.to(dtype)
        name = m.group(2)
        slot, name = (c[0], 0) if name is None else ((c[0], int(name)) if name.isdigit() else (c[1], name))
        if m.group(3) is None:
            slot[name] = t
        else:
            slot.setdefault(name, {})[int(m.group(3))] = t
    for i, spec in extra.items():
        if not str(i).isdigit():
            raise ValueError(f"--calib {path}: metadata call key {i!r} is not a call index")
        c = calls.setdefault(int(i), [{}, {}])
        for j, v in (spec.get("args") or {}).items():
            c[0][int(j)] = v
        c[1].update(spec.get("kwargs") or {})
    if not calls:
        raise ValueError(f"--calib {path}: no tensors")

    def unlist(v):
        return [v[m] for m in sorted(v)] if isinstance(v, dict) and all(isinstance(k, int) for k in v) and v else v

    out = []
    for i in sorted(calls):
        pos, kw = calls[i]
        if pos and sorted(pos) != list(range(len(pos))):
            raise ValueError(f"--calib {path}: call {i} has positional inputs {sorted(pos)}; they must be 0..n-1")
        out.append((tuple(unlist(pos[j]) for j in range(len(pos))), {k: unlist(v) for k, v in kw.items()}))
    return out


def _token_calls(ids: list[list[int]], seq_len: int, vocab: int | None, where: str) -> list[Call]:
    calls = []
    for row in ids:
        row = row[:seq_len]
        if not row:
            continue
        if vocab is not None and max(row) >= vocab:
            raise ValueError(f"{where}: token id {max(row)} >= vocab size {vocab}")
        calls.append(((torch.tensor([row], dtype=torch.long),), {}))
    return calls


def load_batches(calib: str | None, lm: LoadedModel, *, seq_len: int = 128, num_samples: int = 8,
                 seed: int = 1) -> list[Call]:
    """The calibration calls for ``lm`` (see the module docstring)."""
    if calib is not None and calib != "default":
        path = Path(calib)
        if not path.is_file():
            raise ValueError(f"--calib {calib}: no such file")
        if path.suffix == ".safetensors":
            return _saved_inputs(path, lm.dtype)[:num_samples] if num_samples else _saved_inputs(path, lm.dtype)
        if path.suffix in (".txt", ".jsonl", ".json"):
            if lm.tokenize is None:
                raise ValueError(f"--calib {calib}: text prompts need a language model with a tokenizer; "
                                 f"{lm.source} ({lm.kind}) has none — pass saved inputs (.safetensors)")
            prompts = _read_prompts(path)[: num_samples or None]
            return _token_calls([lm.tokenize(p) for p in prompts], seq_len, lm.vocab_size, f"--calib {calib}")
        raise ValueError(f"--calib {calib}: unknown data format (use .txt, .jsonl or .safetensors)")
    # built-in defaults
    gen = torch.Generator().manual_seed(seed)
    if lm.kind == "tiny-dit":
        ch = lm.config["in_channels"]
        return [((torch.randn(1, seq_len, ch, generator=gen).to(lm.dtype),), {}) for _ in range(num_samples)]
    if lm.kind == "diffusers":
        from ..models.dit import example_call

        try:
            return [example_call(lm.model, seed=seed + i, dtype=lm.dtype) for i in range(num_samples)]
        except ValueError as e:
            raise ValueError(f"{lm.source}: {e}: pass --calib FILE.safetensors, or capture a denoise loop with "
                             f"`calibrate --pipeline DIR`") from None
    if lm.kind == "tiny-llama":
        v = lm.vocab_size
        return [((torch.randint(0, v, (1, seq_len), generator=gen),), {}) for _ in range(num_samples)]
    if lm.tokenize is not None:
        prompts = [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(num_samples)]
        return _token_calls([lm.tokenize(p) for p in prompts], seq_len, lm.vocab_size, "built-in prompts")
    if lm.vocab_size:
        v = int(lm.vocab_size)
        return [((torch.randint(0, v, (1, seq_len), generator=gen),), {}) for _ in range(num_samples)]
    raise ValueError(f"{lm.source} ({lm.kind}): no built-in calibration data for this model; pass --calib "
                     f"FILE.safetensors with saved inputs (keys '<i>' or '<i>.<kwarg>')")


def batches_digest(calls: list[Call]) -> str:
    """Content hash of the calibration calls (part of the recipe hash)."""
    h = hashlib.sha256()

    def add(t: Any):
        if isinstance(t, (list, tuple)):
            h.update(f"seq{len(t)}".encode())
            for item in t:
                add(item)
        elif isinstance(t, torch.Tensor):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(t).encode())

    for args, kwargs in calls:
        for a in args:
            add(a)
        for k in sorted(kwargs):
            h.update(k.encode())
            add(kwargs[k])
    return h.hexdigest()[:16]
