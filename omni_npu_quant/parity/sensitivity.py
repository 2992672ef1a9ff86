"""Layer-sensitivity search: which layers to keep in float so a quantized pipeline reaches a target ``psnr_db``.

The automated version of vLLM-Omni's hand-made per-model ``ignored_layers`` tables (Qwen-Image:
skip ``img_mlp``; vllm-project/vllm-omni ``docs/user_guide/diffusion/quantization/fp8.md``).
Every measurement is a full trajectory run (``parity.trajectory``): the decoded output of the
quantized pipeline against the float pipeline, same prompt / seed / steps.

1. **Groups** of the layers the plan quantizes (``plan_quantization`` with the base config):
   ``kind`` (default) -- one group per module kind inside the numbered blocks, across all blocks
   (``blocks.*.ffn.*``, ``transformer_blocks.*.img_mlp.*``, ``layers.*.feed_forward.*``), plus one
   per layer outside blocks; ``block`` -- one group per numbered block (``blocks.3``); ``layer`` --
   one group per linear.  Each group is written as a pattern of the one selection grammar
   (``integrations.selection``), so it can go straight into ``ignored_layers``.
2. **Rank**: the baseline run quantizes every planned layer; then each group alone is kept in
   float; the share of the baseline's final-latent relative L2 error that this removes is the
   group's contribution to the trajectory error (a continuous measure: uint8 psnr_db saturates near
   the rounding floor, ~50 dB, and is too coarse to rank by); its psnr_db gain is reported too.
3. **Greedy**: groups are added in rank order (ties: fewer weights first) until the run reaches
   ``target_psnr + margin_db``; then **prune**: each chosen group, least useful first, is dropped
   again if the target is still met without it.  The result is a small set (not proven minimal:
   the search is greedy, one run per step), reported with the share of weights it keeps float.
4. The proposal is a ``QuantConfig`` (``to_dict()`` JSON: what ``quantize_`` / ``load_quantized``'s
   callers and ``omni-npu-quant trajectory --config`` read); ``check_holdout`` applies it to
   another prompt / seed.

For a pipeline with several transformers (Wan2.2 A14B: ``transformer`` + ``transformer_2``, the
same architecture) the groups and the proposed config apply to every transformer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .trajectory import TrajectoryError, TrajectoryRequest, TrajectoryRunner

__all__ = ["LayerGroup", "layer_groups", "search_ignored", "check_holdout", "GROUPINGS", "to_markdown"]

GROUPINGS = ("kind", "block", "layer")


@dataclass
class LayerGroup:
    pattern: str
    layers: list[str]
    weights: int  # N x K summed over the group's layers (per transformer)
    results: dict = field(default_factory=dict)


def _planned(runner: TrajectoryRunner, config) -> dict[str, tuple[int, int]]:
    """{name: (N, K)} of the layers the plan quantizes, the same in every transformer (else an error)."""
    from ..integrations.torch import plan_quantization

    per_sub = {}
    for s in runner.subs:
        model: nn.Module = runner._float[s]
        per_sub[s] = {p.name: (p.out_features, p.in_features) for p in plan_quantization(model, config) if p.quantized}
    first = next(iter(per_sub.values()))
    for s, names in per_sub.items():
        if set(names) != set(first):
            diff = sorted(set(names) ^ set(first))[:5]
            raise TrajectoryError(f"sensitivity search: the transformers of this pipeline quantize different layers "
                                  f"({runner.subs[0]} vs {s}: {diff}); search each transformer on its own")
    if not first:
        raise TrajectoryError(f"sensitivity search: scheme {config.scheme} quantizes no layer of "
                              f"{type(runner._float[runner.subs[0]]).__name__} with this config")
    return first


def layer_groups(names: dict[str, tuple[int, int]], by: str = "kind", all_names=None) -> list[LayerGroup]:
    """Groups of ``names`` (see the module doc); every pattern is checked to select exactly its group
    among the quantized layers (``all_names``: every linear, for the check that it matches something)."""
    from ..integrations.selection import BLOCK_RE, compile_pattern

    if by not in GROUPINGS:
        raise TrajectoryError(f"--groups: one of {', '.join(GROUPINGS)}, got {by!r}")
    groups: dict[str, list[str]] = {}
    for n in names:
        m = BLOCK_RE.match(n)
        if by == "layer" or m is None:
            key = n
        elif by == "block":
            key = m.group("block")
        else:
            container = m.group("block").rsplit(".", 1)[0]
            rest = n[len(m.group("block")) + 1:]
            kind, _, tail = rest.partition(".")
            key = f"{container}.*.{kind}" + (".*" if tail else "")
        groups.setdefault(key, []).append(n)
    out = []
    for pat, members in groups.items():
        p = compile_pattern(pat, what="sensitivity group")
        hit = [n for n in names if p.matches(n)]
        if sorted(hit) != sorted(members):  # a glob crossing into another group: fall back to exact names
            for n in members:
                out.append(LayerGroup(n, [n], names[n][0] * names[n][1]))
            continue
        out.append(LayerGroup(pat, sorted(members), sum(names[n][0] * names[n][1] for n in members)))
    return out


def _psnr(cmp_: dict) -> float:
    return float(cmp_["output_metrics"]["all_frames_metrics"]["psnr_db"])


def search_ignored(runner: TrajectoryRunner, *, scheme: str, backend: str = "reference", target_psnr: float = 25.0,
                   margin_db: float = 0.5, groups: str = "kind", base_config: dict | None = None,
                   device: str = "cpu", progress: Callable[[str], None] | None = None) -> dict:
    """Rank layer groups by trajectory error and propose a small ``ignored_layers`` reaching ``target_psnr``."""
    from ..integrations.torch import QuantConfig, linear_names
    from ..schemes.registry import get_scheme

    if not math.isfinite(target_psnr):
        raise TrajectoryError(f"--target-psnr must be a finite number of dB, got {target_psnr}")
    if margin_db < 0:
        raise TrajectoryError(f"--margin-db must be >= 0, got {margin_db}")
    say = progress or (lambda m: None)
    base = dict(base_config or {})
    base.pop("backend", None)
    base["scheme"] = get_scheme(scheme).name
    base_ignored = list(base.get("ignored_layers") or [])
    cfg0 = QuantConfig.from_dict(base)
    planned = _planned(runner, cfg0)
    allnames = linear_names(runner._float[runner.subs[0]])
    grp = layer_groups(planned, groups, allnames)
    total_w = sum(n * k for n, k in planned.values())
    goal = target_psnr + margin_db
    runs: list[dict] = []

    def measure(extra: list[str], why: str) -> tuple[float, float]:
        cfg = QuantConfig.from_dict({**base, "ignored_layers": base_ignored + extra})
        res = runner.run_variant(cfg, backend, device)
        c = runner.compare(res, device)
        p, lat = _psnr(c), float(c["final_latent_metrics"]["relative_l2"])
        runs.append({"why": why, "ignored": list(extra), "psnr_db": p, "latent_relative_l2": lat,
                     "mae": c["output_metrics"]["all_frames_metrics"]["mae"]})
        say(f"  {why}: psnr_db {p:.2f}, final-latent relative_l2 {lat:.3e}")
        return p, lat

    say(f"sensitivity: {len(grp)} group(s) by {groups}, {cfg0.scheme} on {backend}, target {target_psnr} dB "
        f"(+{margin_db} margin)")
    baseline, base_lat = measure([], "all quantized")
    if baseline >= goal:
        chosen: list[LayerGroup] = []
        final = baseline
    else:
        for g in grp:
            g.results["psnr_db"], lat = measure([g.pattern], f"keep {g.pattern} float")
            g.results["gain_db"] = g.results["psnr_db"] - baseline
            g.results["latent_relative_l2"] = lat
            # the share of the all-quantized latent error this group removes: continuous, unlike uint8 psnr
            g.results["latent_error_removed"] = (base_lat - lat) / base_lat if base_lat > 0 else 0.0
        ranked = sorted(grp, key=lambda g: (-g.results["latent_error_removed"], g.weights, g.pattern))
        chosen, final = [], baseline
        for g in ranked:
            chosen.append(g)
            final = g.results["psnr_db"] if len(chosen) == 1 else \
                measure([c.pattern for c in chosen], f"greedy +{g.pattern}")[0]
            if final >= goal:
                break
        if final < goal:
            raise TrajectoryError(f"sensitivity search: even with every group float psnr_db is {final:.2f} "
                                  f"< {goal:.2f}; the float defaults or the base config limit it")
        for g in sorted(chosen, key=lambda g: (g.results["latent_error_removed"], -g.weights)):
            if len(chosen) == 1:
                break
            trial = [c for c in chosen if c is not g]
            p = measure([c.pattern for c in trial], f"prune -{g.pattern}")[0]
            if p >= goal:
                chosen, final = trial, p
    cfg = QuantConfig.from_dict({**base, "ignored_layers": base_ignored + [g.pattern for g in chosen]})
    kept_w = sum(g.weights for g in chosen)
    return {
        "scheme": cfg0.scheme, "backend": backend, "device": device, "groups_by": groups,
        "target_psnr_db": target_psnr, "margin_db": margin_db, "baseline_psnr_db": baseline,
        "final_psnr_db": final, "request": runner.request.__dict__.copy(), "transformers": runner.subs,
        "baseline_latent_relative_l2": base_lat,
        "groups": [{"pattern": g.pattern, "layers": len(g.layers), "weights": g.weights, **g.results} for g in
                   sorted(grp, key=lambda g: -g.results.get("latent_error_removed", 0.0))],
        "ignored_layers": [g.pattern for g in chosen],
        "kept_float_weight_fraction": kept_w / total_w if total_w else 0.0,
        "quantized_layers": len(planned), "runs": runs,
        "config": cfg.to_dict(),
    }


def check_holdout(runner: TrajectoryRunner, result: dict, request: TrajectoryRequest, *, device: str = "cpu") -> dict:
    """Apply the proposed config to another request; returns its psnr_db and whether it meets the target."""
    from ..integrations.torch import QuantConfig

    other = runner.with_request(request)
    cfg = QuantConfig.from_dict(result["config"])
    res = other.run_variant(cfg, result["backend"], device)
    c = other.compare(res, device)
    base = other.run_variant(QuantConfig.from_dict({**result["config"], "ignored_layers": [
        p for p in result["config"]["ignored_layers"] if p not in result["ignored_layers"]]}), result["backend"], device)
    cb = other.compare(base, device)
    p = _psnr(c)
    return {"request": request.__dict__.copy(), "psnr_db": p, "baseline_psnr_db": _psnr(cb),
            "meets_target": p >= result["target_psnr_db"],
            "mae": c["output_metrics"]["all_frames_metrics"]["mae"]}


def to_markdown(result: dict) -> str:
    r = result
    lines = [f"# Sensitivity search: {r['scheme']} on {r['backend']} ({', '.join(r['transformers'])})", "",
             f"Target psnr_db {r['target_psnr_db']} (+{r['margin_db']} dB margin on the search request); "
             f"all {r['quantized_layers']} planned layers quantized: {r['baseline_psnr_db']:.2f} dB; with the "
             f"proposal: {r['final_psnr_db']:.2f} dB, keeping {100 * r['kept_float_weight_fraction']:.1f} % of the "
             f"quantized weights float.", "",
             "Proposed `ignored_layers`: " + (", ".join(f"`{p}`" for p in r["ignored_layers"]) or "none (the "
                                                 "target is met with everything quantized)"), "",
             "| group (pattern) | layers | weights | latent error removed | psnr_db kept float | gain dB |",
             "|---|---|---|---|---|---|"]
    for g in r["groups"]:
        if "psnr_db" not in g:
            lines.append(f"| `{g['pattern']}` | {g['layers']} | {g['weights']} | not measured (target met) | – | – |")
            continue
        lines.append(f"| `{g['pattern']}` | {g['layers']} | {g['weights']} | "
                     f"{100 * g.get('latent_error_removed', float('nan')):.1f} % | "
                     f"{g.get('psnr_db', float('nan')):.2f} | {g.get('gain_db', float('nan')):+.2f} |")
    if "holdout" in r:
        h = r["holdout"]
        lines += ["", f"Held-out request (prompt {h['request']['prompt']!r}, seed {h['request']['seed']}): "
                      f"{h['psnr_db']:.2f} dB with the proposal (all quantized: {h['baseline_psnr_db']:.2f} dB) — "
                      f"{'meets' if h['meets_target'] else 'MISSES'} the target {r['target_psnr_db']}."]
    lines += ["", f"{len(r['runs'])} trajectory runs. The search is greedy (rank, add, prune), not exhaustive."]
    return "\n".join(lines) + "\n"
