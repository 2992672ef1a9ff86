"""Write msModelSlim-compatible AscendV1 checkpoints, atomically.

Names, dtypes and shapes follow msModelSlim 26.1.0's ``ascendv1_saver``
(``msmodelslim/core/quant_service/modelslim_v1/save/ascendv1.py``): per-tensor labels, fp32
``.bias`` labelled FLOAT (the layer's label for dual-scale), ``.linear.*`` + ``.div.mul_scale``
for layers with a ``mul_scale``, then ``version`` / ``model_quant_type`` / ``metadata`` /
``group_size`` / ``optional``; description JSON with ``indent=4``; safetensors without metadata;
shards ``quant_model_weights-0000i-of-0000K.safetensors`` + index (``indent=2``) when
``part_file_size`` > 0.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..schemes.base import SchemeValidationError
from ..schemes.registry import LABEL_TO_SCHEME, get_scheme
from .format import DESC_V1, INDEX_V1, MX_LABELS, WEIGHTS_V1, model_quant_type, natural_key, shard_name
from .reader import CheckpointError

__all__ = ["write_ascendv1", "MARKER_METHOD"]

MARKER_METHOD = "omni_npu_quant"
_GB = 1024 ** 3
# stored order of a Linear's tensors (msModelSlim writes weight first)
_ORDER = ("weight", "weight_scale", "weight_offset", "weight_dual_scale", "quant_bias", "input_scale", "input_offset",
          "deq_scale", "bias")
_COPY_EXT = (".json", ".py", ".txt", ".jinja")


def write_ascendv1(out_dir, layers: dict, float_tensors: dict, *, config: dict | None = None,
                   part_file_size: float = 0, extra_description: dict | None = None,
                   quantization_config_marker: bool = False, copy_from: str | None = None,
                   overwrite: bool = False, validate: bool = True) -> Path:
    """Write an AscendV1 checkpoint directory; returns its path.

    :param layers: ``{prefix: (label, tensors)}``; ``tensors`` keyed by suffix (``weight``, ...,
        ``bias``, ``mul_scale``), stored verbatim.  A ``mul_scale`` moves the Linear's tensors to
        ``prefix.linear.*`` and writes ``prefix.div.mul_scale`` (non-fusion smooth layout).
    :param float_tensors: unquantized tensors ``{full key: tensor}`` (label FLOAT, dtype kept).
    :param config: ``config.json`` content (``quantization_config`` is removed, as msModelSlim does).
    :param part_file_size: shard size in GB; 0 writes one ``quant_model_weights.safetensors``.
    :param extra_description: global keys added to the description (e.g. ``kv_cache_type``).
    :param quantization_config_marker: add ``{"quant_method": "omni_npu_quant", ...}`` to config.json.
    :param copy_from: model directory whose ``*.json/*.py/*.txt/*.jinja`` files are copied first.
    :param overwrite: replace an existing non-empty ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise CheckpointError(f"output {out} exists and is not empty; pass overwrite=True to replace it")
    tensors, labels = _flatten(layers, float_tensors, validate)
    desc: dict = dict(labels)
    if extra_description:
        clash = sorted(set(extra_description) & set(labels))
        if clash:
            raise CheckpointError(f"extra_description keys {clash} collide with tensor keys")
        desc.update(extra_description)
    layer_labels = [lab for lab, _ in layers.values()]
    desc.setdefault("version", "1.0.0")
    desc["model_quant_type"] = model_quant_type(layer_labels)
    desc.setdefault("metadata", {})
    desc["group_size"] = _group_size(layers)
    desc.setdefault("optional", {})
    for k in ("version", "model_quant_type", "metadata", "group_size", "optional"):  # globals last, in saver order
        desc[k] = desc.pop(k)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        cfg = None
        if copy_from is not None:
            src = Path(copy_from)
            if not src.is_dir():
                raise CheckpointError(f"copy_from={copy_from!r} is not a directory")
            for f in sorted(src.iterdir()):
                if f.is_file() and f.suffix in _COPY_EXT and not f.name.endswith("index.json") \
                        and not f.name.startswith("quant_model_description"):
                    shutil.copyfile(f, tmp / f.name)
            if (tmp / "config.json").exists():
                cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        if config is not None:
            cfg = dict(config)
        if cfg is not None or quantization_config_marker:
            cfg = dict(cfg or {})
            cfg.pop("quantization_config", None)
            if isinstance(cfg.get("text_config"), dict):
                cfg["text_config"] = {k: v for k, v in cfg["text_config"].items() if k != "quantization_config"}
            if quantization_config_marker:
                cfg["quantization_config"] = {
                    "quant_method": MARKER_METHOD,
                    "format": "ascendv1",
                    "description_file": DESC_V1,
                    "model_quant_type": desc["model_quant_type"],
                    "version": desc["version"],
                }
            _write_json(tmp / "config.json", cfg, indent=2)
        _write_json(tmp / DESC_V1, desc, indent=4)
        _write_weights(tmp, tensors, part_file_size)
        _fsync_dir(tmp)
        _commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------------
def _flatten(layers, float_tensors, validate):
    tensors: dict[str, torch.Tensor] = {}
    labels: dict[str, str] = {}

    def put(key, t, lab):
        if key in tensors:
            raise CheckpointError(f"tensor key {key!r} written twice (layer and float tensor?)")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensor {key!r} is a {type(t).__name__}, expected torch.Tensor")
        tensors[key] = t.detach().to("cpu").contiguous()
        labels[key] = lab

    items = [(p, "L") for p in layers] + [(k, "F") for k in float_tensors]
    for name, kind in sorted(items, key=lambda x: natural_key(x[0])):
        if kind == "F":
            put(name, float_tensors[name], "FLOAT")
            continue
        entry = layers[name]
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise CheckpointError(f"layer {name!r}: expected (label, tensors), got {type(entry).__name__}")
        label, ts = entry
        if label not in LABEL_TO_SCHEME:
            raise CheckpointError(f"layer {name!r}: label {label!r} is not one we write; known {sorted(LABEL_TO_SCHEME)}")
        if validate:
            scheme = get_scheme(label)
            try:
                scheme.validate(ts, where=name, k=int(ts["mul_scale"].shape[0]) if "mul_scale" in ts else None)
            except SchemeValidationError as e:
                raise CheckpointError(f"refusing to write layer {name!r}: {e}") from None
        base = name + ".linear" if "mul_scale" in ts else name
        order = [s for s in _ORDER if s in ts] + sorted(s for s in ts if s not in _ORDER and s != "mul_scale")
        for s in order:
            t = ts[s]
            if s == "bias":
                put(f"{base}.bias", t.to(torch.float32), label if label == "W4A4_MXFP4_DUALSCALE" else "FLOAT")
            else:
                put(f"{base}.{s}", t, label)
        if "mul_scale" in ts:
            put(f"{name}.div.mul_scale", ts["mul_scale"].to(torch.float32), "FLOAT")
    return tensors, labels


def _group_size(layers) -> int:
    gs = 0
    for label, ts in layers.values():
        if label in MX_LABELS:
            return 32
        ws = ts.get("weight_scale")
        if label in ("W8A8_DYNAMIC", "W8A16") and ws is not None and ws.dim() == 2 and ws.shape[1] > 1:
            gs = int(ts["weight"].shape[1]) // int(ws.shape[1])
    return gs


def _write_json(path: Path, obj, indent: int):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def _save(path: Path, tensors: dict):
    from safetensors.torch import save_file

    save_file(tensors, str(path))  # no metadata, like msModelSlim
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_weights(tmp: Path, tensors: dict, part_file_size: float):
    if not part_file_size or part_file_size <= 0:
        _save(tmp / WEIGHTS_V1, tensors)
        return
    limit = float(part_file_size) * _GB
    shards: list[dict] = [{}]
    size = 0
    total = 0
    for k, t in tensors.items():
        nb = t.numel() * t.element_size()
        if shards[-1] and size + nb >= limit:  # msModelSlim starts a new file when the next tensor would reach it
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nb
        total += nb
    n = len(shards)
    wmap = {}
    prefix = WEIGHTS_V1[: -len(".safetensors")]
    for i, sh in enumerate(shards, 1):
        name = shard_name(i, n, prefix)
        _save(tmp / name, sh)
        wmap.update({k: name for k in sh})
    _write_json(tmp / INDEX_V1, {"metadata": {"total_size": total}, "weight_map": wmap}, indent=2)


def _fsync_dir(p: Path):
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, out: Path, overwrite: bool):
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif overwrite:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        else:
            raise CheckpointError(f"output {out} appeared while writing; not overwritten")
    os.rename(tmp, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
