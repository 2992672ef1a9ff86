"""Reader of nunchaku SVDQuant safetensors (``SVDQW4A4Linear`` layers) -> ``svdq_int4`` / ``svdq_nvfp4`` tensor sets.

Per layer ``p`` nunchaku stores (nunchaku-tech/nunchaku ``nunchaku/models/linear.py``; layouts from
``nunchaku/lora/flux/packer.py`` and the kernels' loaders, docs/svd.md section 1):

* ``p.qweight`` int8 [N, K/2]: 4-bit codes in MMA tile order (``NunchakuWeightPacker(bits=4, warp_n=128)``: tiles of
  128 output rows x 64 inputs, 8 nibbles per little-endian int32, nibble i at bits 4i); N % 128 == 0 and
  K % 128 == 0.  INT4: signed nibbles; NVFP4: E2M1 codes (bit 3 = sign).
* ``p.wscales`` [K/G, N]: INT4 16-bit (G = 64, ``pack_scale``), NVFP4 float8_e4m3fn (G = 16, ``pack_micro_scale``).
* ``p.smooth_factor`` [K], ``p.bias`` [N], ``p.wcscales`` [N] (NVFP4): "packed ws" vectors (the one-group
  ``pack_scale`` order); ``p.smooth_factor_orig`` is unused by nunchaku and ignored here.
* ``p.proj_down`` [K, rank], ``p.proj_up`` [N, rank] (``lora_down`` / ``lora_up`` also accepted): 16-bit,
  ``pack_lowrank_weight`` order (16 x 16 packs); rank % 16 == 0.
* ``p.wtscale`` (NVFP4 per-tensor alpha; ``alpha`` also accepted; default 1.0 as nunchaku's loader does).

Every permutation is inverted by index arithmetic only (reshape / permute, ``numerics/nunchaku_layout.py``, which
also holds the inverse direction ``to_nunchaku_layout``), so the canonical tensors hold exactly the stored bits.  Everything else in the files is returned as float tensors.  Files are read with ``safetensors``
(no pickle).  Errors name the file and the tensor.

nunchaku's ``AWQW4A16Linear`` layers (``qweight`` + ``wscales`` + ``wzeros``, e.g. FLUX's ``norm1.linear``) are not
read: ``NunchakuCheckpoint.unread`` lists them with the reason.  ``detect_nunchaku`` tells a nunchaku file (or a
directory holding one) from the header's tensor names, without reading tensor data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..numerics.fp4 import pack_fp4
# the layouts themselves (both directions, index arithmetic only) live in numerics/nunchaku_layout.py
from ..numerics.nunchaku_layout import (LOWRANK_PACK, TILE_K, WARP_N, NunchakuLayoutError, pack_lowrank,  # noqa: F401
                                        pack_micro_scales, pack_vector, pack_weight, pack_wscales, to_nunchaku_layout,
                                        unpack_lowrank, unpack_micro_scales, unpack_vector, unpack_weight,
                                        unpack_wscales)

__all__ = ["NunchakuError", "NunchakuCheckpoint", "NunchakuFile", "load_nunchaku", "is_nunchaku", "detect_nunchaku",
           "NOT_A_CHECKPOINT", "unpack_weight", "unpack_wscales",
           "unpack_micro_scales", "unpack_vector", "unpack_lowrank", "pack_weight", "pack_wscales",
           "pack_micro_scales", "pack_vector", "pack_lowrank", "to_nunchaku_layout"]


class NunchakuError(NunchakuLayoutError):
    """A nunchaku checkpoint that does not match the format; the message names the file and tensor."""


@dataclass
class NunchakuCheckpoint:
    path: str
    layers: dict[str, tuple[str, dict[str, torch.Tensor]]]  # prefix -> (scheme name, canonical tensor set)
    float_tensors: dict[str, torch.Tensor]
    files: list[str]
    ignored: list[str] = field(default_factory=list)
    # prefix -> why the layer was not read (nunchaku's AWQ W4A16 layers: qweight + wscales + wzeros)
    unread: dict[str, str] = field(default_factory=dict)

    def entries(self) -> dict:
        """``{prefix: (scheme name, tensors)}``, what ``load_quantized`` takes."""
        return dict(self.layers)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise NunchakuError(f"{path}: not a .safetensors file")
        return [path]
    if not path.is_dir():
        raise NunchakuError(f"{path}: no such file or directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise NunchakuError(f"{path}: no .safetensors file")
    return files


def is_nunchaku(path) -> bool:
    """Whether ``path`` (file or directory) holds at least one ``<layer>.qweight`` + ``<layer>.wscales`` pair."""
    from safetensors import safe_open

    try:
        for f in _files(Path(path)):
            with safe_open(str(f), framework="pt") as h:
                keys = set(h.keys())
            if any(k.endswith(".qweight") and k[:-8] + ".wscales" in keys for k in keys):
                return True
    except (NunchakuError, OSError, ValueError):
        return False
    return False


AWQ_UNREAD = ("nunchaku AWQ W4A16 layer (qweight + wscales + wzeros, AWQW4A16Linear): not read, no scheme here "
              "takes its GEMV packing")
_DOWN, _UP = ("proj_down", "lora_down"), ("proj_up", "lora_up")


def _is_awq(p: str, keys) -> bool:
    """``p`` is an ``AWQW4A16Linear`` (zeros, no low-rank factors), not an ``SVDQW4A4Linear``."""
    return f"{p}.wzeros" in keys and not any(f"{p}.{s}" in keys for s in _DOWN + _UP)


@dataclass
class NunchakuFile:
    """What ``detect_nunchaku`` read from one safetensors header (no tensor data is read)."""
    path: str  # the .safetensors file
    svdq: list[str]  # prefixes with qweight + wscales and no wzeros (SVDQW4A4Linear; load_nunchaku checks the rest)
    awq: list[str]  # prefixes with qweight + wscales + wzeros (AWQW4A16Linear): not read
    metadata: dict[str, str] = field(default_factory=dict)  # nunchaku's single-file metadata (config, model_class, ...)
    other_files: list[str] = field(default_factory=list)  # a directory's other (not nunchaku) safetensors files

    def quantization_config(self) -> dict | None:
        """nunchaku's ``quantization_config`` metadata (method, weight / activation dtype and group, rank), if any."""
        import json

        try:
            q = json.loads(self.metadata.get("quantization_config", "null"))
        except ValueError:
            return None
        return q if isinstance(q, dict) else None


def _scan_header(f: Path) -> NunchakuFile | None:
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="pt") as h:
            keys = set(h.keys())
            meta = dict(h.metadata() or {})
    except Exception as e:  # noqa: BLE001 - name the file and what safetensors says
        raise NunchakuError(f"{f}: cannot read the safetensors header ({type(e).__name__}: {e})") from None
    pairs = sorted(k[: -len(".qweight")] for k in keys if k.endswith(".qweight") and k[:-8] + ".wscales" in keys)
    if not pairs:
        return None
    awq = [p for p in pairs if _is_awq(p, keys)]
    return NunchakuFile(str(f), [p for p in pairs if p not in awq], awq, meta)


# what a path given as a checkpoint must be (parity / inspect say it when detection finds neither format)
NOT_A_CHECKPOINT = ("neither an AscendV1 / msModelSlim checkpoint directory (quant_model_description.json + "
                    "quant_model_weight*.safetensors) nor a nunchaku SVDQuant safetensors file (tensors "
                    "'<layer>.qweight' + '<layer>.wscales' + '<layer>.proj_down' / '.proj_up')")


def detect_nunchaku(path) -> NunchakuFile | None:
    """The nunchaku-format safetensors file at ``path``, or None when ``path`` is not one.

    By tensor names in the header only: a layer is ``<p>.qweight`` + ``<p>.wscales`` (SVDQuant: with
    ``proj_down`` / ``proj_up`` (or ``lora_down`` / ``lora_up``), ``smooth_factor``, ...; AWQ W4A16: with ``wzeros``).
    ``path`` is a ``.safetensors`` file, or a directory without a ``quant_model_description*.json`` (an AscendV1 /
    MindIE-SD directory is never nunchaku) holding exactly one such file (nunchaku ships one file per precision;
    several in one directory raise ``NunchakuError`` naming them).  An unreadable header raises, naming the file."""
    from .format import DESC_RE

    root = Path(path)
    if root.is_file():
        return _scan_header(root) if root.suffix == ".safetensors" else None
    if not root.is_dir() or any(DESC_RE.match(p.name) for p in root.iterdir()):
        return None
    files = sorted(root.glob("*.safetensors"))
    found = [nf for nf in (_scan_header(f) for f in files) if nf is not None]
    if len(found) > 1:
        raise NunchakuError(f"{root}: several nunchaku-format safetensors files "
                            f"({', '.join(Path(nf.path).name for nf in found)}); pass one file")
    if not found:
        return None
    found[0].other_files = [f.name for f in files if str(f) != found[0].path]
    return found[0]


def load_nunchaku(path, *, validate: bool = True) -> NunchakuCheckpoint:
    """Read every ``SVDQW4A4Linear`` of a nunchaku checkpoint (file or directory of safetensors)."""
    from safetensors import safe_open

    root = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for f in _files(root):
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    if k in tensors:
                        raise NunchakuError(f"{f.name}: tensor '{k}' also stored in {origin[k]}")
                    tensors[k] = h.get_tensor(k)
                    origin[k] = f.name
        except NunchakuError:
            raise
        except Exception as e:  # noqa: BLE001 - report what safetensors says, naming the file
            raise NunchakuError(f"{f.name}: cannot read ({type(e).__name__}: {e})") from None
    prefixes = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    layers, used, ignored = {}, set(), []
    unread = {p: AWQ_UNREAD for p in prefixes if _is_awq(p, tensors)}  # not SVDQuant: listed, not read
    prefixes = [p for p in prefixes if p not in unread]
    used |= {k for k in tensors if k.rpartition(".")[0] in unread}  # (nor returned as float tensors)
    for p in prefixes:
        name, ts, keys = _layer(p, tensors, origin)
        if validate:
            from ..schemes.base import SchemeValidationError
            from ..schemes.registry import get_scheme

            try:
                get_scheme(name).validate(ts, where=p)
            except SchemeValidationError as e:
                raise NunchakuError(f"{origin[p + '.qweight']}: {e}") from None
        layers[p] = (name, ts)
        used |= keys
        if p + ".smooth_factor_orig" in tensors:
            ignored.append(p + ".smooth_factor_orig")
            used.add(p + ".smooth_factor_orig")
    floats = {k: t for k, t in tensors.items() if k not in used}
    return NunchakuCheckpoint(str(root), layers, floats, sorted(set(origin.values())), ignored, unread)


def _layer(p: str, t: dict[str, torch.Tensor], origin: dict[str, str]):
    def get(*names, required=True):
        for nm in names:
            if f"{p}.{nm}" in t:
                return f"{p}.{nm}", t[f"{p}.{nm}"]
        if required:
            raise NunchakuError(f"{origin[p + '.qweight']}: layer {p} has a qweight but no {' / '.join(names)}")
        return None, None

    def bad(key, msg):
        return NunchakuError(f"{origin[key]}: tensor '{key}' {msg}")

    kq, qw = get("qweight")
    if qw.dtype != torch.int8 or qw.dim() != 2:
        raise bad(kq, f"must be int8 [N, K/2], got {qw.dtype} {list(qw.shape)}")
    n, k = int(qw.shape[0]), 2 * int(qw.shape[1])
    if n % WARP_N or k % (2 * TILE_K):
        raise bad(kq, f"is [N={n}, K/2={k // 2}]: nunchaku's packing needs N % {WARP_N} == 0 and K % {2 * TILE_K} == 0")
    kw, ws = get("wscales")
    nvfp4 = ws.dtype == torch.float8_e4m3fn
    if not nvfp4 and ws.dtype not in (torch.bfloat16, torch.float16):
        raise bad(kw, f"has dtype {ws.dtype}: INT4 wscales are bf16/fp16, NVFP4 float8_e4m3fn")
    group = 16 if nvfp4 else 64
    if tuple(ws.shape) != (k // group, n):
        raise bad(kw, f"has shape {list(ws.shape)}, expected [{k // group}, {n}] ({'NVFP4' if nvfp4 else 'INT4'}, "
                      f"group {group})")
    kd, down = get("proj_down", "lora_down")
    ku, up = get("proj_up", "lora_up")
    for key, w, rows in ((kd, down, k), (ku, up, n)):
        if w.dim() != 2 or w.shape[0] != rows or w.dtype not in (torch.bfloat16, torch.float16):
            raise bad(key, f"must be 16-bit [{rows}, rank], got {w.dtype} {list(w.shape)}")
    rank = int(down.shape[1])
    if up.shape[1] != rank:
        raise bad(ku, f"has rank {up.shape[1]}, {kd} has rank {rank}")
    if rank % LOWRANK_PACK:
        raise bad(kd, f"has rank {rank}: nunchaku's low-rank packing needs rank % {LOWRANK_PACK} == 0")
    keys = {kq, kw, kd, ku}
    out: dict[str, torch.Tensor] = {}
    if nvfp4:
        out["weight"] = pack_fp4(unpack_weight(qw, signed=False))
        out["weight_scale"] = unpack_micro_scales(ws, n).contiguous()
        ka, alpha = get("wtscale", "alpha", required=False)
        if alpha is not None:
            if alpha.numel() != 1:
                raise bad(ka, f"must hold one value (per-tensor alpha), got shape {list(alpha.shape)}")
            keys.add(ka)
        out["alpha"] = (alpha.reshape(1).to(torch.float32) if alpha is not None
                        else torch.ones(1, dtype=torch.float32))
        kc, wc = get("wcscales", required=False)
        if wc is not None:
            if wc.numel() != n:
                raise bad(kc, f"must hold N = {n} values, got shape {list(wc.shape)}")
            out["wcscales"] = unpack_vector(wc).contiguous()
            keys.add(kc)
    else:
        out["weight"] = unpack_weight(qw, signed=True)
        out["weight_scale"] = unpack_wscales(ws, n).contiguous()
        for extra in ("wcscales", "wtscale"):
            if f"{p}.{extra}" in t:
                raise bad(f"{p}.{extra}", "belongs to NVFP4 layers, but this layer's wscales are INT4 (16-bit)")
    ks, sm = get("smooth_factor", required=False)
    if sm is not None:
        if sm.numel() != k:
            raise bad(ks, f"must hold K = {k} values, got shape {list(sm.shape)}")
        out["smooth_factor"] = unpack_vector(sm).contiguous()
        keys.add(ks)
    kb, b = get("bias", required=False)
    if b is not None:
        if b.numel() != n:
            raise bad(kb, f"must hold N = {n} values, got shape {list(b.shape)}")
        out["bias"] = unpack_vector(b).contiguous()
        keys.add(kb)
    out["svd_lowrank_l1"] = unpack_lowrank(down, down=True).contiguous()
    out["svd_lowrank_l2"] = unpack_lowrank(up, down=False).contiguous()
    return ("svdq_nvfp4" if nvfp4 else "svdq_int4"), out, keys
