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

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path

import torch

from ..schemes.base import SchemeValidationError
from ..schemes.registry import LABEL_TO_SCHEME, get_scheme
from .format import DESC_V1, INDEX_V1, MX_LABELS, WEIGHTS_V1, model_quant_type, natural_key, shard_name
from .layout import (FLOAT_LABEL, MUL_SCALE, SHARED_INPUT_GROUPS_KEY, SHARED_INPUT_TENSORS, TRAILING_GLOBAL_KEYS,
                     layer_tensor_keys, msmodelslim_dtype, parse_shared_input_groups)
from .reader import CheckpointError

__all__ = ["write_ascendv1", "MARKER_METHOD", "OutputLockedError", "output_lock", "staging_names"]

MARKER_METHOD = "omni_npu_quant"
_GB = 1024 ** 3
# stored order of a Linear's tensors (msModelSlim writes weight first)
_ORDER = ("weight", "weight_scale", "weight_offset", "weight_dual_scale", "quant_bias", "input_scale", "input_offset",
          "deq_scale", "bias")
_COPY_EXT = (".json", ".py", ".txt", ".jinja")
_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "half": torch.float16,
                "float": torch.float32}


class OutputLockedError(CheckpointError):
    """Another live process holds the output's lock (``pid`` when it could be read)."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid


# ------------------------------------------------------------------------------------------------
# the output lock: ``.<name>.lock`` next to the output, fcntl.flock (advisory), pid inside.
_HELD: dict[str, int] = {}  # lock path -> nesting depth held by this process (reentrant)


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def staging_names(out: Path) -> tuple[str, ...]:
    """Name prefixes of the staging / leftover directories that writers of ``out`` create next to it."""
    return (f".{out.name}.tmp-", f".{out.name}.old-", f".{out.name}.staging-")


@contextlib.contextmanager
def output_lock(out_dir):
    """Hold the advisory lock of output ``out_dir`` (reentrant within a process).

    A second process gets ``OutputLockedError`` naming the holder's pid.  On acquiring, staging
    directories of ``out_dir`` left by killed runs are removed: every writer holds this lock while
    its staging exists, so whatever is there now belongs to a dead run."""
    import fcntl

    out = Path(out_dir)
    lp = _lock_path(out.absolute())
    key = str(lp)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield out
        finally:
            _HELD[key] -= 1
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _os_error(e, f"cannot create the output's parent directory {out.parent}") from None
    while True:
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise _os_error(e, f"cannot create the lock file {lp.name} next to {out}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                pid = int(os.read(fd, 32).decode("ascii", "replace").strip() or 0) or None
            except (OSError, ValueError):
                pid = None
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f"process {pid}" if pid else "another process"
                raise OutputLockedError(f"output {out} is being written by {who} (lock {lp.name}); wait for that "
                                        "run to finish or choose another output directory", pid) from None
            raise _os_error(e, f"cannot lock {lp.name}") from None
        try:  # the file we locked must still be the one at the path (a finishing run unlinks it)
            same = os.path.samestat(os.fstat(fd), os.stat(lp))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = 1
        _remove_stale(out)
        yield out
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            os.unlink(lp)
        os.close(fd)


def _remove_stale(out: Path):
    prefixes = staging_names(out)
    try:
        names = os.listdir(out.parent)
    except OSError:
        return
    for n in names:
        if n.startswith(prefixes):
            shutil.rmtree(out.parent / n, ignore_errors=True)


def _os_error(e: OSError, what: str) -> CheckpointError:
    if e.errno == errno.ENOSPC or e.errno == getattr(errno, "EDQUOT", -1):
        why = "no space left on the device (or quota exceeded)"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    elif e.errno == errno.EROFS:
        why = "read-only file system"
    else:
        why = e.strerror or str(e)
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return CheckpointError(f"{what}: {why}{where}; nothing was written to the output")


def _model_dtype(model_dtype, cfg: dict | None, float_tensors: dict):
    """The model dtype msModelSlim keys storage on: ``model_dtype``, else the config's ``torch_dtype`` / ``dtype``,
    else the one floating dtype of the float (unquantized) tensors, else None (dtype-dependent storage is then left
    as given)."""
    if model_dtype is not None:
        if isinstance(model_dtype, str):
            if model_dtype.replace("torch.", "") not in _DTYPE_NAMES:
                raise CheckpointError(f"model_dtype {model_dtype!r}: use bfloat16, float16 or float32")
            return _DTYPE_NAMES[model_dtype.replace("torch.", "")]
        return model_dtype
    for c in (cfg, (cfg or {}).get("text_config") if isinstance(cfg, dict) else None):
        if isinstance(c, dict):
            for k in ("torch_dtype", "dtype"):
                v = c.get(k)
                if isinstance(v, str) and v.replace("torch.", "") in _DTYPE_NAMES:
                    return _DTYPE_NAMES[v.replace("torch.", "")]
    floats = {t.dtype for t in (float_tensors or {}).values()
              if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if len(floats) == 1 and next(iter(floats)) in _DTYPE_NAMES.values():
        return next(iter(floats))
    return None


def write_ascendv1(out_dir, layers: dict, float_tensors: dict, *, config: dict | None = None,
                   part_file_size: float = 0, extra_description: dict | None = None,
                   quantization_config_marker: bool = False, copy_from: str | None = None,
                   overwrite: bool = False, validate: bool = True, shared_input_groups=None,
                   extra_files: dict | None = None, model_dtype=None) -> Path:
    """Write an AscendV1 checkpoint directory; returns its path.

    :param layers: ``{prefix: (label, tensors)}``; ``tensors`` keyed by suffix (``weight``, ...,
        ``bias``, ``mul_scale``).  A ``mul_scale`` moves the Linear's tensors to ``prefix.linear.*``
        and writes ``prefix.div.mul_scale`` (non-fusion smooth layout, ``layout.py``).  Values are
        stored verbatim; dtypes follow msModelSlim per label (lossless: fp32 for float scales,
        int64 ``deq_scale`` for a non-bf16 model, float8 view of MXFP8 weight bytes).
    :param float_tensors: unquantized tensors ``{full key: tensor}`` (label FLOAT, dtype kept).
        Tensors sharing memory (tied embeddings, one bias under two names) are written under each name.
    :param config: ``config.json`` content (``quantization_config`` is removed, as msModelSlim does).
    :param part_file_size: shard size in GB; 0 writes one ``quant_model_weights.safetensors``.
    :param extra_description: global keys added to the description (e.g. ``kv_cache_type``).
    :param quantization_config_marker: add ``{"quant_method": "omni_npu_quant", ...}`` to config.json.
    :param copy_from: model directory whose ``*.json/*.py/*.txt/*.jinja`` files are copied first.
    :param overwrite: replace an existing non-empty ``out_dir``.
    :param shared_input_groups: lists of layer prefixes that read one input tensor (from the producer's data
        flow, e.g. calibration); recorded as the description's ``shared_input_groups`` and checked here and
        by the reader: the members' ``mul_scale`` / ``input_scale`` / ``input_offset`` must be identical.
    :param extra_files: ``{file name: str | bytes}`` written into the same atomic output (e.g. reports).
    :param model_dtype: the model dtype (decides W8A8 ``deq_scale`` storage); default: the ``torch_dtype`` /
        ``dtype`` of ``config`` or of the copied ``config.json``; unknown: ``deq_scale`` stored as given.
    """
    out = Path(out_dir)
    with output_lock(out):
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise CheckpointError(f"output {out} exists and is not empty; pass overwrite=True to replace it")
        src_cfg = None
        if copy_from is not None:
            src = Path(copy_from)
            if not src.is_dir():
                raise CheckpointError(f"copy_from={copy_from!r} is not a directory")
            if (src / "config.json").is_file():
                try:
                    src_cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    raise CheckpointError(f"copy_from: cannot read {src / 'config.json'}: {e}") from None
        mdt = _model_dtype(model_dtype, config if config is not None else src_cfg, float_tensors)
        groups = _check_groups(shared_input_groups, layers)
        tensors, labels = _flatten(layers, float_tensors, validate, mdt)
        desc: dict = dict(labels)
        if extra_description:
            clash = sorted(set(extra_description) & set(labels))
            if clash:
                raise CheckpointError(f"extra_description keys {clash} collide with tensor keys")
            desc.update(extra_description)
        if groups:
            desc[SHARED_INPUT_GROUPS_KEY] = groups
        layer_labels = [lab for lab, _ in layers.values()]
        desc.setdefault("version", "1.0.0")
        desc["model_quant_type"] = model_quant_type(layer_labels)
        desc.setdefault("metadata", {})
        desc["group_size"] = _group_size(layers)
        desc.setdefault("optional", {})
        for k in TRAILING_GLOBAL_KEYS:  # globals last, in saver order
            desc[k] = desc.pop(k)
        for name in extra_files or {}:
            if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
                raise CheckpointError(f"extra_files: {name!r} is not a plain file name")
            if name in (DESC_V1, INDEX_V1, "config.json") or name.startswith("quant_model_weight"):
                raise CheckpointError(f"extra_files: {name!r} would replace a checkpoint file")

        tmp = out.parent / f"{staging_names(out)[0]}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)  # mode from the umask, like every other file we create
        except OSError as e:
            raise _os_error(e, f"cannot create a staging directory next to {out}") from None
        try:
            cfg = None
            if copy_from is not None:
                for f in sorted(Path(copy_from).iterdir()):
                    if f.is_file() and f.suffix in _COPY_EXT and not f.name.endswith("index.json") \
                            and not f.name.startswith("quant_model_description"):
                        shutil.copyfile(f, tmp / f.name)
                cfg = src_cfg
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
            for name, data in (extra_files or {}).items():
                _write_bytes(tmp / name, data.encode("utf-8") if isinstance(data, str) else bytes(data))
            _fsync_dir(tmp)
            _commit(tmp, out, overwrite)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _os_error(e, f"writing {out} failed") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


# ------------------------------------------------------------------------------------------------
def _check_groups(groups, layers) -> list[list[str]]:
    if groups is None:
        return []
    try:
        groups = parse_shared_input_groups([list(g) for g in groups])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"shared_input_groups: {e}") from None
    for i, g in enumerate(groups):
        missing = [m for m in g if m not in layers]
        if missing:
            raise CheckpointError(f"shared_input_groups[{i}] names {missing}, which are not layers being written")
        for suf in SHARED_INPUT_TENSORS:
            have = [(m, layers[m][1][suf]) for m in g if suf in layers[m][1]]
            if not have:
                continue
            if len(have) != len(g):
                raise CheckpointError(f"shared_input_groups[{i}]: only {[m for m, _ in have]} of {g} have '{suf}'")
            ref = have[0][1]
            for m, v in have[1:]:
                if v.shape != ref.shape or not torch.equal(v.detach().cpu().float(), ref.detach().cpu().float()):
                    raise CheckpointError(f"shared_input_groups[{i}]: '{suf}' of {m} differs from {have[0][0]}; "
                                          "layers reading one input must share it")
    return groups


def _flatten(layers, float_tensors, validate, model_dtype):
    from ..numerics.int8 import deq_scale_fp32, deq_scale_to_int64

    tensors: dict[str, torch.Tensor] = {}
    labels: dict[str, str] = {}
    storages: set[tuple] = set()

    def put(key, t, lab):
        if key in tensors:
            raise CheckpointError(f"tensor key {key!r} written twice (layer and float tensor?)")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensor {key!r} is a {type(t).__name__}, expected torch.Tensor")
        t = t.detach().to("cpu").contiguous()
        if t.numel():
            sid = (t.untyped_storage().data_ptr(), t.device.type)
            if sid in storages:  # tied / shared tensors: safetensors refuses shared memory; store each name
                t = t.clone()
                sid = (t.untyped_storage().data_ptr(), t.device.type)
            storages.add(sid)
        tensors[key] = t
        labels[key] = lab

    items = [(p, "L") for p in layers] + [(k, "F") for k in float_tensors]
    for name, kind in sorted(items, key=lambda x: natural_key(x[0])):
        if kind == "F":
            put(name, float_tensors[name], FLOAT_LABEL)
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
                scheme.validate(ts, where=name, k=int(ts[MUL_SCALE].shape[0]) if MUL_SCALE in ts else None)
            except SchemeValidationError as e:
                raise CheckpointError(f"refusing to write layer {name!r}: {e}") from None
        order = [s for s in _ORDER if s in ts] + sorted(s for s in ts if s not in _ORDER and s != MUL_SCALE)
        if MUL_SCALE in ts:
            order.append(MUL_SCALE)
        for s, (key, lab) in layer_tensor_keys(name, label, order).items():
            t = ts[s]
            want = msmodelslim_dtype(label, s, model_dtype)
            if want is not None and isinstance(t, torch.Tensor) and t.dtype != want:
                if s == "deq_scale":
                    t = deq_scale_to_int64(deq_scale_fp32(t)) if want == torch.int64 else deq_scale_fp32(t)
                elif want == torch.float8_e4m3fn and t.dtype == torch.uint8:
                    t = t.view(torch.float8_e4m3fn)  # the same bytes, under msModelSlim's dtype
                elif want == torch.float32 and t.is_floating_point() and t.dtype in (torch.bfloat16, torch.float16):
                    t = t.to(torch.float32)  # exact upcast
            put(key, t, lab)
    return tensors, labels


def _group_size(layers) -> int:
    gs = 0
    for label, ts in layers.values():
        if label in MX_LABELS:
            return 32
        ws = ts.get("weight_scale")
        if label in ("W8A8_DYNAMIC", "W8A16", "W4A16") and ws is not None and ws.dim() == 2 and ws.shape[1] > 1:
            gs = int(ts["weight"].shape[1]) // int(ws.shape[1])
    return gs


def _write_bytes(path: Path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj, indent: int):
    _write_bytes(path, json.dumps(obj, indent=indent, ensure_ascii=False).encode("utf-8"))


def _save(path: Path, tensors: dict):
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path))  # no metadata, like msModelSlim
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors reports I/O failures as its own error type
        msg = str(e)
        for code, needles in ((errno.ENOSPC, ("os error 28", "No space left")),
                              (errno.EACCES, ("os error 13", "Permission denied")),
                              (getattr(errno, "EDQUOT", 122), ("os error 122", "quota exceeded"))):
            if any(n in msg for n in needles):
                raise OSError(code, os.strerror(code), str(path)) from None
        raise CheckpointError(f"safetensors could not write {path.name}: {msg}") from None
    os.chmod(path, 0o666 & ~_umask())  # safetensors creates its file 0600; ours follow the umask
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and racy)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


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
