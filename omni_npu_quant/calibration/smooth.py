"""Per-group smoothing search under the exact quantizer of the target scheme.

SmoothQuant-family migration (``dual_scale.md`` section 5, msModelSlim ``iter_smooth``)::

    s = A^alpha / W^(1 - alpha)        A: per-input-channel activation absmax (calibration)
                                       W: per-input-channel weight absmax over every member of the group
    s = s / geomean(s)                 (an overall factor changes no scheme's result; keeps s near 1)
    s = clamp(s, 1/c, c)               optional migration clamp c
    s = max(s, scale_min)              msModelSlim's floor (1e-5)
    mul_scale = act_dtype(1 / s)       what the device multiplies the input by
    W' = W / mul_scale                 (fp32; W diag(s) with s exactly 1 / mul_scale)

Each candidate (every ``alpha`` x every clamp, plus the identity ``mul_scale = 1``) is scored by
the relative L2 error of the group's outputs on the sampled calibration rows, computed with the
scheme's own ``quantize_weight`` and ``forward`` (the exact reference backend); the smallest wins,
ties going to the identity and then to the earlier candidate.  Static W8A8 derives its input
range from the smoothed per-channel min / max.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schemes.base import Scheme
from ..kernels import reference_linear
from .collect import GroupStats

__all__ = ["Candidate", "GroupResult", "make_mul_scale", "quantize_member", "search_group", "candidates"]

F32 = torch.float32


@dataclass(frozen=True)
class Candidate:
    alpha: float | None  # None = identity (no smoothing)
    clamp: float | None = None

    @property
    def label(self) -> str:
        if self.alpha is None:
            return "identity"
        return f"alpha={self.alpha:g}" + ("" if self.clamp is None else f",clamp={self.clamp:g}")


@dataclass
class GroupResult:
    key: str
    members: list[str]
    chosen: Candidate
    err_before: dict[str, float]  # per member, identity
    err_after: dict[str, float]  # per member, chosen
    group_before: float
    group_after: float
    tensors: dict[str, dict[str, torch.Tensor]]  # per member, the chosen tensor set
    scores: list[tuple[str, float]]  # every candidate's group error


def candidates(alphas, clamps) -> list[Candidate]:
    out = [Candidate(None)]
    for a in alphas:
        for c in clamps:
            out.append(Candidate(float(a), None if c is None else float(c)))
    return out


def make_mul_scale(a_absmax: torch.Tensor, w_absmax: torch.Tensor, cand: Candidate, *, scale_min: float,
                   act_dtype: torch.dtype) -> torch.Tensor:
    """fp32 (K,) mul_scale whose values are exactly representable in ``act_dtype``."""
    a = a_absmax.to(torch.float64)
    w = w_absmax.to(torch.float64).clamp(min=1e-12)
    s = a.pow(cand.alpha) / w.pow(1.0 - cand.alpha)
    pos = s > 0
    if bool(pos.any()):
        s = s / torch.exp(torch.log(s[pos]).mean())
    if cand.clamp is not None:
        s = s.clamp(1.0 / cand.clamp, cand.clamp)
    s = s.clamp(min=scale_min)
    fi = torch.finfo(act_dtype)
    m = (1.0 / s).clamp(fi.tiny, fi.max)
    m = m.to(act_dtype).to(F32)
    return m


def quantize_member(scheme: Scheme, weight: torch.Tensor, bias: torch.Tensor | None, stats: GroupStats,
                    mul_scale: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The stored tensor set of one linear for a given ``mul_scale`` (None = no smoothing)."""
    w = weight.to(F32)
    kw = {}
    if mul_scale is not None:
        w = w / mul_scale
    if scheme.needs_calibration:  # static activation range (w8a8_static)
        m = torch.ones_like(stats.amin) if mul_scale is None else mul_scale
        lo, hi = stats.amin * m, stats.amax * m  # m > 0 keeps min <= max per channel
        kw = {"act_min": float(lo.min()), "act_max": float(hi.max())}
    # scales computed in the model dtype, as msModelSlim does (numerics.int8), though w is fp32 here
    t = scheme.quantize_weight(w, None if bias is None else bias.detach(), model_dtype=weight.dtype, **kw)
    if scheme.bias_in_quant_bias and bias is not None:
        t["bias"] = bias.detach().to(F32)  # msModelSlim keeps the fp32 float bias (folded into quant_bias)
    if mul_scale is not None:
        t["mul_scale"] = mul_scale.clone()
    return t


def _output_error(scheme: Scheme, x: torch.Tensor, tensors: dict, y_ref: torch.Tensor) -> float:
    y = reference_linear(scheme, x, tensors).to(torch.float64)
    return float(((y - y_ref) ** 2).sum())


def search_group(scheme: Scheme, stats: GroupStats, weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
                 cands: list[Candidate], *, scale_min: float = 1e-5, act_dtype: torch.dtype = torch.bfloat16) -> GroupResult:
    """Try every candidate on the group's sampled rows; keep the best (see the module docstring)."""
    names = stats.members
    x = stats.rows.to(act_dtype)
    xf = x.to(torch.float64)
    refs, norms = {}, {}
    weights = {n: (w.detach(), None if b is None else b.detach()) for n, (w, b) in weights.items()}
    for n in names:
        w, b = weights[n]
        y = xf @ w.to(torch.float64).T
        if b is not None:
            y = y + b.to(torch.float64)
        refs[n] = y
        norms[n] = float((y ** 2).sum())
    w_absmax = torch.stack([weights[n][0].detach().float().abs().amax(0) for n in names]).amax(0)
    total_norm = max(sum(norms.values()), 1e-300)

    best = None
    scores = []
    before = None
    for cand in cands:
        ms = None if cand.alpha is None else make_mul_scale(stats.absmax, w_absmax, cand, scale_min=scale_min,
                                                              act_dtype=act_dtype)
        tensors, errs = {}, {}
        for n in names:
            w, b = weights[n]
            tensors[n] = quantize_member(scheme, w, b, stats, ms)
            errs[n] = _output_error(scheme, x, tensors[n], refs[n])
        g = math.sqrt(sum(errs.values()) / total_norm)
        scores.append((cand.label, g))
        per = {n: math.sqrt(errs[n] / max(norms[n], 1e-300)) for n in names}
        if cand.alpha is None:
            before = (per, g)
        if best is None or g < best[0]:
            best = (g, cand, per, tensors)
        else:
            del tensors
    g, cand, per, tensors = best
    return GroupResult(stats.key, list(names), cand, before[0], per, before[1], g, tensors, scores)
