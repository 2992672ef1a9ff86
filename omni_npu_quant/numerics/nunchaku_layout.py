"""nunchaku's SVDQuant tensor layouts (nunchaku-tech/nunchaku ``nunchaku/lora/flux/packer.py``,
``NunchakuWeightPacker(bits=4, warp_n=128)``, and the kernels' loaders; docs/svd.md section 1) as index arithmetic.

``unpack_*``: nunchaku's stored tensor -> our canonical row-major tensor (the checkpoint reader,
``checkpoint/nunchaku.py``); ``pack_*`` / ``to_nunchaku_layout``: the exact inverses (the nunchaku kernel entry,
``kernels/cuda/svdq_nunchaku.py``).  Every function is a reshape / permute of the stored elements (and, for the
4-bit weight, the nibble packing), so no value is recomputed: both directions are bit-preserving.
"""
from __future__ import annotations

import torch

from .fp4 import unpack_fp4
from .int4 import pack_int4, unpack_int4

__all__ = ["NunchakuLayoutError", "WARP_N", "TILE_K", "LOWRANK_PACK", "unpack_weight", "unpack_wscales",
           "unpack_micro_scales", "unpack_vector", "unpack_lowrank", "pack_weight", "pack_wscales",
           "pack_micro_scales", "pack_vector", "pack_lowrank", "to_nunchaku_layout"]


class NunchakuLayoutError(ValueError):
    """A tensor that nunchaku's packing cannot hold (shape rule); the message names it."""


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


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _unpermute(flat: torch.Tensor, dims, perm) -> torch.Tensor:
    """The tensor of shape ``dims`` whose ``.permute(perm)`` flattened is ``flat``."""
    stored = tuple(dims[p] for p in perm)
    return flat.reshape(stored).permute(_inverse(perm))


def _permute(t: torch.Tensor, dims, perm) -> torch.Tensor:
    """The stored flat order of a canonical tensor viewed as ``dims`` (the inverse of ``_unpermute``)."""
    return t.reshape(dims).permute(perm).reshape(-1)


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


# ---- canonical -> nunchaku's layout: the exact inverses of the unpack_* functions above (the nunchaku kernel entry
# kernels/cuda/svdq_nunchaku.py hands these to nunchaku's ops) -----------------------------------------------------
def _need(ok: bool, what: str) -> None:
    if not ok:
        raise NunchakuLayoutError(what)


def pack_weight(w: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """Row-major [N, K] signed int4 values (int8) or 4-bit codes (uint8) -> int8 [N, K/2] ``qweight`` tile order."""
    n, k = w.shape
    _need(n % WARP_N == 0 and k % (2 * TILE_K) == 0,
          f"weight [{n}, {k}]: nunchaku's packing needs N % {WARP_N} == 0 and K % {2 * TILE_K} == 0")
    v = w.to(torch.int32)
    if not signed:
        v = torch.where(v >= 8, v - 16, v)  # a 4-bit code as the nibble it is stored as
    nib = _permute(v, _W_DIMS(n, k), _W_PERM)
    return pack_int4(nib.view(-1, 8)).contiguous().view(torch.int8).reshape(n, k // 2)


def pack_wscales(s: torch.Tensor) -> torch.Tensor:
    """INT4 scales [N, G] -> ``wscales`` [G, N] (``pack_scale`` order)."""
    n, g = s.shape
    _need(n % WARP_N == 0, f"wscales: N = {n} must be a multiple of {WARP_N}")
    return _permute(s, (n // WARP_N, 1, 8, 2, 4, 2, g), _S_PERM).reshape(g, n)


def pack_vector(v: torch.Tensor) -> torch.Tensor:
    """[L] -> the "packed ws" vector order (one-group ``pack_scale``)."""
    n = v.numel()
    _need(n % WARP_N == 0, f"vector of {n} values: nunchaku's packing needs a multiple of {WARP_N}")
    return _permute(v.reshape(n), (n // WARP_N, 1, 8, 2, 4, 2, 1), _S_PERM).reshape(n)


def pack_micro_scales(s: torch.Tensor) -> torch.Tensor:
    """NVFP4 scales [N, K/16] -> ``wscales`` [K/16, N] (``pack_micro_scale`` order)."""
    n, g = s.shape
    _need(n % WARP_N == 0 and g % 4 == 0, f"micro scales [{n}, {g}]: need N % {WARP_N} == 0 and K/16 % 4 == 0")
    return _permute(s, (n // WARP_N, 1, 4, 4, 8, g // 4, 4), _MS_PERM).reshape(g, n)


def pack_lowrank(t: torch.Tensor, *, down: bool) -> torch.Tensor:
    """L1 [r, K] -> ``proj_down`` [K, r]; L2 [N, r] -> ``proj_up`` [N, r] (``pack_lowrank_weight`` order)."""
    r, c = t.shape if down else t.shape[::-1]
    _need(r % LOWRANK_PACK == 0 and c % LOWRANK_PACK == 0,
          f"low-rank factor {list(t.shape)}: nunchaku's packing needs rank and width multiples of {LOWRANK_PACK}")
    if down:  # stored from (r_packs, 16, c_packs, 16).permute(2, 0, 1, 3), as unpack_lowrank reads it
        packs = t.reshape(r // LOWRANK_PACK, LOWRANK_PACK, c // LOWRANK_PACK, LOWRANK_PACK).permute(2, 0, 1, 3)
    else:
        packs = t.reshape(c // LOWRANK_PACK, LOWRANK_PACK, r // LOWRANK_PACK, LOWRANK_PACK).permute(0, 2, 1, 3)
    cp, rp = c // LOWRANK_PACK, r // LOWRANK_PACK
    return _permute(packs.contiguous(), (cp, rp) + _LR_DIMS, _LR_PERM).reshape(c, r)


def to_nunchaku_layout(scheme_name: str, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A canonical ``svdq_int4`` / ``svdq_nvfp4`` tensor set -> nunchaku's stored tensors (``qweight``, ``wscales``,
    ``proj_down``, ``proj_up``, ``smooth_factor``, ``bias``, NVFP4 ``wcscales`` / ``wtscale``), dtypes kept:
    ``load_nunchaku`` of these tensors returns ``t`` bit for bit."""
    if scheme_name not in ("svdq_int4", "svdq_nvfp4"):
        raise NunchakuLayoutError(f"to_nunchaku_layout: scheme {scheme_name!r} is not svdq_int4 / svdq_nvfp4")
    nvfp4 = scheme_name == "svdq_nvfp4"
    w = t["weight"]
    n = int(w.shape[0])
    if nvfp4:
        out = {"qweight": pack_weight(unpack_fp4(w, 2 * int(w.shape[1])), signed=False),
               "wscales": pack_micro_scales(t["weight_scale"]),
               "wtscale": t["alpha"].reshape(()).clone()}
        if "wcscales" in t:
            out["wcscales"] = pack_vector(t["wcscales"])
    else:
        out = {"qweight": pack_weight(w, signed=True), "wscales": pack_wscales(t["weight_scale"])}
    for name in ("smooth_factor", "bias"):
        if name in t:
            out[name] = pack_vector(t[name])
    out["proj_down"] = pack_lowrank(t["svd_lowrank_l1"], down=True)
    out["proj_up"] = pack_lowrank(t["svd_lowrank_l2"], down=False)
    assert out["qweight"].shape == (n, int(w.shape[1]) if nvfp4 else int(w.shape[1]) // 2)
    return {k: v.contiguous() for k, v in out.items()}
