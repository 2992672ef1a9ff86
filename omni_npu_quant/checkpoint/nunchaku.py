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

Every permutation is inverted by index arithmetic only (reshape / permute), so the canonical tensors hold exactly the
stored bits.  Everything else in the files is returned as float tensors.  Files are read with ``safetensors``
(no pickle).  Errors name the file and the tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..numerics.fp4 import pack_fp4
from ..numerics.int4 import unpack_int4

__all__ = ["NunchakuError", "NunchakuCheckpoint", "load_nunchaku", "is_nunchaku", "unpack_weight", "unpack_wscales",
           "unpack_micro_scales", "unpack_vector", "unpack_lowrank"]

WARP_N = 128  # output rows per tile (warp_n)
TILE_K = 64  # inputs per tile (comp_k for 4 bits)
# weight tile view (n_tiles, num_n_packs, n_pack_size, num_n_lanes, reg_n, k_tiles, num_k_packs, k_pack_size,
# num_k_lanes, reg_k) and the permutation nunchaku stores it in
_W_DIMS = lambda n, k: (n // WARP_N, 8, 2, 8, 1, k // TILE_K, 1, 2, 4, 8)  # noqa: E731
_W_PERM = (0, 5, 6, 1, 3, 8, 2, 7, 4, 9)
_S_PERM = (0, 6, 1, 2, 4, 3, 5)  # pack_scale: (tiles, packs, lanes/4, pack/2, 4, 2, groups) -> stored
_MS_PERM = (0, 5, 1, 4, 3, 2, 6)  # pack_micro_scale: (tiles, packs, pack, 4, 8, k/64, 4) -> stored
_LR_PERM = (0, 1, 3, 6, 2, 5, 4, 7)  # pack_lowrank_weight, inside each 16 x 16 pack
_LR_DIMS = (2, 8, 1, 2, 4, 2)  # n_pack_size, num_n_lanes, reg_n, k_pack_size, num_k_lanes, reg_k
LOWRANK_PACK = 16


class NunchakuError(ValueError):
    """A nunchaku checkpoint that does not match the format; the message names the file and tensor."""


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _unpermute(flat: torch.Tensor, dims, perm) -> torch.Tensor:
    """The tensor of shape ``dims`` whose ``.permute(perm)`` flattened is ``flat``."""
    stored = tuple(dims[p] for p in perm)
    return flat.reshape(stored).permute(_inverse(perm))


def unpack_weight(qweight: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """int8 [N, K/2] tile-packed nibbles -> row-major [N, K]: signed int4 values (int8) or 4-bit codes (uint8)."""
    n, half = qweight.shape
    k = 2 * half
    words = qweight.contiguous().view(torch.int32)  # little-endian: 4 bytes = 8 nibbles, nibble i at bits 4i
    nib = unpack_int4(words).reshape(-1)  # sign-extended, in stored order
    w = _unpermute(nib, _W_DIMS(n, k), _W_PERM).reshape(n, k)
    return w.to(torch.int8) if signed else (w & 0xF).to(torch.uint8)


def unpack_wscales(ws: torch.Tensor, n: int) -> torch.Tensor:
    """INT4 ``wscales`` [G, N] (``pack_scale`` order) -> [N, G]."""
    g = ws.numel() // n
    t = _unpermute(ws.reshape(-1), (n // WARP_N, 1, 8, 2, 4, 2, g), _S_PERM)
    return t.reshape(n, g)


def unpack_vector(v: torch.Tensor) -> torch.Tensor:
    """A "packed ws" vector [L] (one-group ``pack_scale`` order) -> [L]."""
    n = v.numel()
    return _unpermute(v.reshape(-1), (n // WARP_N, 1, 8, 2, 4, 2, 1), _S_PERM).reshape(n)


def unpack_micro_scales(ws: torch.Tensor, n: int) -> torch.Tensor:
    """NVFP4 ``wscales`` [K/16, N] (``pack_micro_scale`` order) -> [N, K/16]."""
    g = ws.numel() // n
    t = _unpermute(ws.reshape(-1), (n // WARP_N, 1, 4, 4, 8, g // 4, 4), _MS_PERM)
    return t.reshape(n, g)


def unpack_lowrank(w: torch.Tensor, *, down: bool) -> torch.Tensor:
    """``proj_down`` [K, r] -> L1 [r, K]; ``proj_up`` [N, r] -> L2 [N, r] (``pack_lowrank_weight`` inverted)."""
    c, r = w.shape
    cp, rp = c // LOWRANK_PACK, r // LOWRANK_PACK
    packs = _unpermute(w.reshape(-1), (cp, rp) + _LR_DIMS, _LR_PERM).reshape(cp, rp, LOWRANK_PACK, LOWRANK_PACK)
    if down:  # stored from (r_packs, 16, c_packs, 16).permute(2, 0, 1, 3)
        return packs.permute(1, 2, 0, 3).reshape(r, c)
    return packs.permute(0, 2, 1, 3).reshape(c, r)  # from (c_packs, 16, r_packs, 16).permute(0, 2, 1, 3)


@dataclass
class NunchakuCheckpoint:
    path: str
    layers: dict[str, tuple[str, dict[str, torch.Tensor]]]  # prefix -> (scheme name, canonical tensor set)
    float_tensors: dict[str, torch.Tensor]
    files: list[str]
    ignored: list[str] = field(default_factory=list)

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
    return NunchakuCheckpoint(str(root), layers, floats, sorted(set(origin.values())), ignored)


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
