"""A writer of nunchaku SVDQuant safetensors for tests, from explicit index formulas (independent of the reader's
reshape/permute inversion in ``omni_npu_quant/checkpoint/nunchaku.py``).

The formulas restate the tile orders of nunchaku-tech/nunchaku ``nunchaku/lora/flux/packer.py``
(``NunchakuWeightPacker(bits=4, warp_n=128)``) and the store-order tables in its comments, written here as
"row / column of the canonical matrix -> flat position in the stored tensor"."""
from __future__ import annotations

import torch

from omni_npu_quant.numerics.int4 import pack_int4


def weight_positions(n: int, k: int) -> torch.Tensor:
    """flat stored nibble position of each canonical (row, col) of an [n, k] weight."""
    r = torch.arange(n).view(n, 1)
    c = torch.arange(k).view(1, k)
    t, nn = r // 128, r % 128
    npack, nps, nl = nn // 16, (nn // 8) % 2, nn % 8  # num_n_packs, n_pack_size, num_n_lanes
    kt, kk = c // 64, c % 64
    kps, kl, rk = kk // 32, (kk // 8) % 4, kk % 8  # k_pack_size, num_k_lanes, reg_k
    kt_n = k // 64
    return (((((((t * kt_n + kt) * 8 + npack) * 8 + nl) * 4 + kl) * 2 + nps) * 2 + kps) * 8 + rk)


def pack_weight(nibbles: torch.Tensor) -> torch.Tensor:
    """[n, k] int values (signed int4 or 4-bit codes 0..15) -> int8 [n, k/2] as nunchaku stores qweight."""
    n, k = nibbles.shape
    flat = torch.empty(n * k, dtype=torch.int64)
    flat[weight_positions(n, k).reshape(-1)] = nibbles.to(torch.int64).reshape(-1) & 0xF
    signed = torch.where(flat >= 8, flat - 16, flat)
    return pack_int4(signed.view(-1, 8)).view(torch.int8).reshape(n, k // 2)


def scale_positions(n: int, groups: int) -> torch.Tensor:
    """flat stored position of canonical (row n, group g) for ``pack_scale`` (warp_n 128: lane 0 holds n 0 1 8 9)."""
    r = torch.arange(n).view(n, 1)
    g = torch.arange(groups).view(1, groups)
    t, nn = r // 128, r % 128
    a, b, c, d = nn // 16, (nn // 8) % 2, (nn // 2) % 4, nn % 2  # n = 16a + 8b + 2c + d
    return ((((t * groups + g) * 8 + a) * 4 + c) * 2 + b) * 2 + d


def pack_scales(s: torch.Tensor) -> torch.Tensor:
    """[n, G] -> [G, n] in ``pack_scale`` order."""
    n, g = s.shape
    flat = torch.empty(n * g, dtype=s.dtype)
    flat[scale_positions(n, g).reshape(-1)] = s.reshape(-1)
    return flat.view(g, n)


def pack_vector(v: torch.Tensor) -> torch.Tensor:
    return pack_scales(v.reshape(-1, 1)).reshape(-1)


def micro_scale_positions(n: int, groups: int) -> torch.Tensor:
    """``pack_micro_scale`` (group 16): lane 0 holds rows 0 32 64 96, 4 consecutive groups each."""
    r = torch.arange(n).view(n, 1)
    g = torch.arange(groups).view(1, groups)
    t, nn = r // 128, r % 128
    e, f, h = nn // 32, (nn // 8) % 4, nn % 8  # n = 32e + 8f + h
    u, v = g // 4, g % 4
    return ((((t * (groups // 4) + u) * 8 + h) * 4 + f) * 4 + e) * 4 + v


def pack_micro_scales(s: torch.Tensor) -> torch.Tensor:
    n, g = s.shape
    flat = torch.empty(n * g, dtype=s.dtype)
    flat[micro_scale_positions(n, g).reshape(-1)] = s.reshape(-1)
    return flat.view(g, n)


def _lowrank_flat(outer, inner):
    """``pack_lowrank_weight``: 16 x 16 packs, inner order (n lanes, k lanes, n_pack_size, k_pack_size, reg_k)."""
    nl, kl, nps, kps, rk = inner
    return ((((outer * 8 + nl) * 4 + kl) * 2 + nps) * 2 + kps) * 2 + rk


def pack_proj_down(l1: torch.Tensor) -> torch.Tensor:
    """L1 [rank, K] -> proj_down [K, rank]."""
    r, k = l1.shape
    i = torch.arange(r).view(r, 1)
    j = torch.arange(k).view(1, k)
    ni, kj = i % 16, j % 16
    outer = (j // 16) * (r // 16) + i // 16
    pos = _lowrank_flat(outer, (ni % 8, (kj // 2) % 4, ni // 8, kj // 8, kj % 2))
    flat = torch.empty(r * k, dtype=l1.dtype)
    flat[pos.reshape(-1)] = l1.reshape(-1)
    return flat.view(k, r)


def pack_proj_up(l2: torch.Tensor) -> torch.Tensor:
    """L2 [N, rank] -> proj_up [N, rank]."""
    n, r = l2.shape
    i = torch.arange(n).view(n, 1)
    j = torch.arange(r).view(1, r)
    ni, kj = i % 16, j % 16
    outer = (i // 16) * (r // 16) + j // 16
    pos = _lowrank_flat(outer, (ni % 8, (kj // 2) % 4, ni // 8, kj // 8, kj % 2))
    flat = torch.empty(n * r, dtype=l2.dtype)
    flat[pos.reshape(-1)] = l2.reshape(-1)
    return flat.view(n, r)


def svdquant_layer(w: torch.Tensor, bias: torch.Tensor | None, smooth: torch.Tensor, rank: int, precision: str,
                   dtype=torch.bfloat16) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A synthetic SVDQuant layer of float weight ``w`` [N, K]: (nunchaku-format tensors, canonical tensors).

    SVDQuant algebra: W' = W diag(smooth) = L2' L1' + R; the residual R is quantized and sees x / smooth; the
    branch sees raw x, so proj_down holds L1 = L1' diag(1 / smooth)."""
    from omni_npu_quant.numerics import svdq as Q
    from omni_npu_quant.numerics.fp4 import encode_e2m1, pack_fp4

    sm = smooth.to(dtype)
    wp = w.float() * sm.float()
    u, s, vh = torch.linalg.svd(wp, full_matrices=False)
    l2 = (u[:, :rank] * s[:rank]).to(dtype)
    l1p = vh[:rank]
    res = wp - l2.float() @ l1p.to(dtype).float()
    l1 = (l1p / sm.float()).to(dtype)
    canon = {"smooth_factor": sm, "svd_lowrank_l1": l1, "svd_lowrank_l2": l2}
    if precision == "int4":
        q, sc = Q.int4_weight_quant(res, dtype)
        nun = {"qweight": pack_weight(q), "wscales": pack_scales(sc)}
        canon.update(weight=q, weight_scale=sc)
    else:
        e, sc, alpha = Q.nvfp4_weight_quant(res)
        codes = encode_e2m1(e)
        wc = (torch.rand(w.shape[0], generator=torch.Generator().manual_seed(1)) * 0.5 + 0.75).to(dtype)
        sc = (sc.float() / wc.float().unsqueeze(1)).clamp(max=448).to(torch.float8_e4m3fn)  # make wcscales matter
        nun = {"qweight": pack_weight(codes), "wscales": pack_micro_scales(sc), "wcscales": pack_vector(wc),
               "wtscale": alpha.reshape(())}
        canon.update(weight=pack_fp4(codes), weight_scale=sc, alpha=alpha, wcscales=wc)
    nun.update(smooth_factor=pack_vector(sm), smooth_factor_orig=pack_vector(sm), proj_down=pack_proj_down(l1),
               proj_up=pack_proj_up(l2))
    if bias is not None:
        nun["bias"] = pack_vector(bias.to(dtype))
        canon["bias"] = bias.to(dtype)
    return nun, canon
