"""Streaming per-input-channel activation statistics, collected with forward pre-hooks.

For every linear to be quantized the float model is run on the calibration calls once; each
hook keeps only running per-channel ``absmax`` / ``min`` / ``max`` (fp32, K values each) and a
bounded, seeded reservoir sample of input rows (``max_rows`` x K in the model dtype).  No
activation tensor outlives its forward call, so the extra memory is O(groups x max_rows x K),
independent of the amount of calibration data.

Linears that receive the *same input tensor object* within one forward (q/k/v, gate/up, a DiT's
to_q/to_k/to_v) form one *group*: they share one set of statistics and must share one
``mul_scale`` (``dual_scale.md`` section 4, constraint 5).  Grouping is read from the model's
actual data flow, not from names.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

__all__ = ["GroupStats", "collect_stats", "run_calls"]


@dataclass
class GroupStats:
    key: str  # name of the first member (the leader)
    members: list[str]
    k: int
    absmax: torch.Tensor  # fp32 (K,)
    amin: torch.Tensor  # fp32 (K,)
    amax: torch.Tensor  # fp32 (K,)
    rows: torch.Tensor  # (R, K) model dtype, R <= max_rows
    seen: int = 0  # rows observed
    _gen: torch.Generator | None = field(default=None, repr=False)

    def update(self, x: torch.Tensor, max_rows: int) -> None:
        x2 = x.detach().reshape(-1, self.k)
        xf = x2.float()
        if not bool(torch.isfinite(xf).all()):
            raise ValueError(f"calibration: non-finite activation at the input of {self.key}")
        self.absmax = torch.maximum(self.absmax, xf.abs().amax(0))
        self.amin = torch.minimum(self.amin, xf.amin(0))
        self.amax = torch.maximum(self.amax, xf.amax(0))
        x2 = x2.to("cpu")
        m = x2.shape[0]
        filled = self.rows.shape[0]
        if filled < max_rows:
            take = min(max_rows - filled, m)
            self.rows = torch.cat([self.rows, x2[:take].clone()])
            self.seen += take
            x2 = x2[take:]
            m -= take
        if m:
            # reservoir sampling (algorithm R), seeded: row number t (1-based) replaces slot j < R
            t = torch.arange(self.seen + 1, self.seen + m + 1, dtype=torch.float64)
            j = torch.floor(torch.rand(m, generator=self._gen, dtype=torch.float64) * t).to(torch.int64)
            for i in (j < max_rows).nonzero().flatten().tolist():
                self.rows[j[i]] = x2[i]
            self.seen += m

    def state(self) -> dict[str, torch.Tensor]:
        return {"absmax": self.absmax, "amin": self.amin, "amax": self.amax, "rows": self.rows.contiguous()}


def run_calls(model: nn.Module, calls: Iterable, progress=None):
    """Run the model on each call (no grad); yields the outputs."""
    with torch.no_grad():
        for args, kwargs in calls:
            out = model(*args, **kwargs)
            if progress is not None:
                progress.update(1)
            yield out


def collect_stats(model: nn.Module, calls: list, names: list[str], *, max_rows: int = 512, seed: int = 0,
                  progress=None) -> list[GroupStats]:
    """Statistics for the linears ``names`` (dotted module names); returns groups in first-call order."""
    mods = dict(model.named_modules())
    for n in names:
        if not isinstance(mods.get(n), nn.Linear):
            raise ValueError(f"calibration: {n!r} is not an nn.Linear of the model")
    group_of: dict[str, GroupStats] = {}
    groups: list[GroupStats] = []
    recent: dict[int, tuple[weakref.ref, GroupStats]] = {}

    def hook_for(name: str):
        def pre_hook(mod, args):
            x = args[0]
            k = x.shape[-1]
            hit = recent.get(id(x))
            g = group_of.get(name)
            if g is None:
                if hit is not None and hit[0]() is x and hit[1].k == k:
                    g = hit[1]
                    g.members.append(name)
                else:
                    g = GroupStats(name, [name], k, torch.zeros(k), torch.full((k,), float("inf")),
                                   torch.full((k,), float("-inf")), torch.empty(0, k, dtype=x.dtype))
                    g._gen = torch.Generator().manual_seed(seed * 1_000_003 + len(groups))
                    groups.append(g)
                group_of[name] = g
            if g.key == name:
                g.update(x, max_rows)
                recent[id(x)] = (weakref.ref(x), g)
        return pre_hook

    handles = [mods[n].register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        for _ in run_calls(model, calls, progress):
            recent.clear()
    finally:
        for h in handles:
            h.remove()
    unseen = [n for n in names if n not in group_of]
    if unseen:
        raise ValueError(f"calibration: the calibration data never reached {unseen[:5]}"
                         f"{' ...' if len(unseen) > 5 else ''}; check --calib or add them to --ignored-layers")
    return groups
