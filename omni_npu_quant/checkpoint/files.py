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
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .format import ST_DTYPES

__all__ = ["TensorInfo", "HeaderError", "read_header", "resolve_inside", "read_regular", "load_json",
           "MAX_JSON_DEPTH"]

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors parser's own limit
_MAX_JSON = 256 * 1024 * 1024  # description / index JSON files
MAX_JSON_DEPTH = 64  # nesting bound for every JSON we parse (a safetensors header needs 3)
_MAX_DIM = 2 ** 63 - 1
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


def _open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file (a FIFO or device would block or never end)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"cannot stat {path.name}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path.name} is not a regular file ({_kind(st.st_mode)}); refusing to open it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ValueError(f"cannot open {path.name}: {e.strerror or e}") from None
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode):  # replaced between stat and open
        os.close(fd)
        raise ValueError(f"{path.name} is not a regular file ({_kind(st2.st_mode)}); refusing to open it")
    return os.fdopen(fd, "rb"), st2.st_size


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: Path, max_bytes: int = _MAX_JSON) -> bytes:
    """The bytes of a regular file (ValueError for anything else, or a file over ``max_bytes``)."""
    f, size = _open_regular(path)
    with f:
        if size > max_bytes:
            raise ValueError(f"{path.name} is {size} bytes, over the {max_bytes}-byte limit")
        return f.read(max_bytes + 1)


_JSON_STR = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _depth_ok(text: str, limit: int) -> bool:
    """True when JSON ``text`` nests arrays/objects at most ``limit`` deep (string contents skipped)."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STR.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON (NaN/Infinity literals are refused)")


def _pairs_no_dupes(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH):
    """Strict JSON: UTF-8, nesting bounded by ``max_depth``, no NaN/Infinity, no duplicate keys.  ValueError."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 ({e})") from None
    if not _depth_ok(raw, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_pairs_no_dupes)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e})") from None
    except RecursionError:  # defensive: _depth_ok bounds it far below the interpreter limit
        raise ValueError("JSON nested too deeply") from None


def _int(v, what: str, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise HeaderError(key, f"{what} must be a non-negative integer, got {v!r}")
    if v < 0 or v > _MAX_DIM:
        raise HeaderError(key, f"{what} {v} is out of range [0, 2**63)")
    return v


def read_header(path: Path, rel: str) -> tuple[dict[str, TensorInfo], dict | None]:
    """Parse and check a safetensors header -> ({key: TensorInfo}, __metadata__). Raises ``HeaderError``.

    Refuses everything the safetensors parser refuses (header length, UTF-8 JSON object starting with ``{``,
    entries with dtype / shape / data_offsets of the right types, offsets contiguous from 0 and covering the
    data section exactly, ``__metadata__`` a string -> string map) plus dtypes we do not know."""
    try:
        f, size = _open_regular(path)
    except ValueError as e:
        raise HeaderError("", str(e)) from None
    with f:
        if size < 8:
            raise HeaderError("", f"file is {size} bytes: too short for a safetensors header (truncated?)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise HeaderError("", f"header length {n} exceeds the file size {size} (truncated or not safetensors)")
        raw = f.read(n)
    if not raw.startswith(b"{"):
        raise HeaderError("", "header does not start with '{'; not a safetensors file")
    try:
        header = load_json(raw, max_depth=8)
    except ValueError as e:
        raise HeaderError("", f"header is not valid JSON: {e}; corrupt file") from None
    if not isinstance(header, dict):
        raise HeaderError("", "header is not a JSON object; corrupt file")
    meta = header.pop("__metadata__", None)
    if meta is not None and (not isinstance(meta, dict)
                             or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise HeaderError("__metadata__", "__metadata__ must map strings to strings; corrupt file")
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans = []
    for key, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise HeaderError(key, "header entry lacks dtype/shape/data_offsets; corrupt file")
        st = e["dtype"]
        if not isinstance(st, str) or st not in _ITEMSIZE:
            raise HeaderError(key, f"unknown safetensors dtype {st!r} (known: {sorted(_ITEMSIZE)})")
        if not isinstance(e["shape"], list):
            raise HeaderError(key, f"shape must be a list of integers, got {e['shape']!r}")
        shape = tuple(_int(s, "shape entry", key) for s in e["shape"])
        offs = e["data_offsets"]
        if not isinstance(offs, list) or len(offs) != 2:
            raise HeaderError(key, f"data_offsets must be [begin, end], got {offs!r}")
        b, end = (_int(v, "data offset", key) for v in offs)
        if end < b:
            raise HeaderError(key, f"data_offsets {[b, end]} end before they begin; corrupt file")
        item = _ITEMSIZE[st]
        want = item * math.prod(shape)
        if end - b != want:
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
        if b > pos:
            raise HeaderError(key, f"gap of {b - pos} bytes before this tensor's data (offset {b}, previous data ends "
                                   f"at {pos}); corrupt file")
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
