"""Safe file access for checkpoints: path containment and safetensors header checks.

A safetensors file is ``u64 little-endian header length`` + JSON header + data; each tensor entry
has ``dtype``, ``shape`` and ``data_offsets`` [begin, end) into the data section.  We check the
header ourselves (so truncated or corrupt files give a message naming the file and tensor) before
``safetensors.safe_open`` reads any tensor; pickle is never used.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .format import ST_DTYPES

__all__ = ["TensorInfo", "HeaderError", "read_header", "resolve_inside"]

_MAX_HEADER = 100 * 1024 * 1024
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "U32": 4, "U64": 8}


class HeaderError(ValueError):
    def __init__(self, tensor: str, message: str):
        super().__init__(message)
        self.tensor = tensor


@dataclass(frozen=True)
class TensorInfo:
    key: str
    file: str  # relative to the checkpoint directory
    dtype: torch.dtype | None
    st_dtype: str
    shape: tuple[int, ...]
    nbytes: int


def read_header(path: Path, rel: str) -> tuple[dict[str, TensorInfo], dict | None]:
    """Parse and check a safetensors header -> ({key: TensorInfo}, __metadata__). Raises ``HeaderError``."""
    size = path.stat().st_size
    if size < 8:
        raise HeaderError("", f"file is {size} bytes: too short for a safetensors header (truncated?)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise HeaderError("", f"header length {n} exceeds the file size {size} (truncated or not safetensors)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError("", f"header is not valid JSON ({e}); corrupt file") from None
    if not isinstance(header, dict):
        raise HeaderError("", "header is not a JSON object; corrupt file")
    meta = header.pop("__metadata__", None)
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans = []
    for key, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise HeaderError(key, "header entry lacks dtype/shape/data_offsets; corrupt file")
        st = e["dtype"]
        shape = tuple(int(s) for s in e["shape"])
        b, end = (int(v) for v in e["data_offsets"])
        item = _ITEMSIZE.get(st)
        if item is None:
            raise HeaderError(key, f"unknown safetensors dtype {st!r}")
        want = item * math.prod(shape)
        if end - b != want or b < 0:
            raise HeaderError(key, f"data_offsets {[b, end]} hold {end - b} bytes, dtype {st} shape {list(shape)} needs {want}")
        if end > data_len:
            raise HeaderError(key, f"data ends at byte {end} but the file has {data_len} data bytes (truncated)")
        spans.append((b, end, key))
        out[key] = TensorInfo(key, rel, ST_DTYPES.get(st), st, shape, want)
    spans.sort()
    pos = 0
    for b, end, key in spans:
        if b < pos:
            raise HeaderError(key, f"tensor data overlaps the previous tensor (offset {b} < {pos}); corrupt file")
        pos = end
    if pos != data_len:
        raise HeaderError("", f"data section is {data_len} bytes but tensors cover {pos}; truncated or trailing bytes")
    return out, meta


def resolve_inside(root: Path, rel: str) -> Path:
    """``root/rel`` if it stays inside ``root`` after resolving links; ValueError otherwise."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"file name {rel!r} is not a non-empty string")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise ValueError(f"absolute path {rel!r} is not allowed; files must be inside the checkpoint directory")
    parts = rel.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"path {rel!r} leaves the checkpoint directory ('..')")
    p = root / rel
    real_root = root.resolve()
    real = p.resolve()
    if real != real_root and real_root not in real.parents:
        raise ValueError(f"path {rel!r} resolves to outside the checkpoint directory (symlink?)")
    return p
