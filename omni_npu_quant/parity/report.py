"""Write a parity report: ``parity.json`` (everything), ``parity.md`` (summary), ``parity.png`` (per-layer error).

Non-finite floats are written to JSON as the strings ``"inf"`` / ``"-inf"`` / ``"nan"`` so the file is
strict JSON.  matplotlib is imported lazily; without it the PNG is skipped with a message.
"""
from __future__ import annotations

import json
import math
import os

FALLBACK_MODE = "exact fallback"  # omni_npu_quant.backends.base.FALLBACK (kept literal: no import of backends here)

__all__ = ["write_report", "to_markdown", "plot_layers", "REPORT_FILES", "backend_colors", "ulp_cell"]

REPORT_FILES = ("parity.json", "parity.md", "parity.png")

# one colour per backend, the same in every panel (and every report): matplotlib's tab10 values
_FIXED_COLORS = {
    "reference": "#7f7f7f",   # grey
    "npu": "#d62728",         # red
    "npu-sim:A2": "#ff7f0e",  # orange
    "npu-sim:A3": "#8c564b",  # brown
    "npu-sim:A5": "#1f77b4",  # blue
    "cuda": "#2ca02c",        # green
}
_SPARE_COLORS = ("#9467bd", "#e377c2", "#bcbd22", "#17becf", "#000000")


def _clean(o):
    if isinstance(o, float):
        if math.isnan(o):
            return "nan"
        if math.isinf(o):
            return "inf" if o > 0 else "-inf"
        return o
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _f(v, fmt=".4g"):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return format(v, fmt)


def _cos(v):
    if v is None:
        return "–"
    return f"{v:.6f}"


def backend_colors(names) -> dict[str, str]:
    """{backend: colour}: fixed for the known backends, then spare colours in first-seen order."""
    out, spare = {}, iter(_SPARE_COLORS)
    for b in names:
        if b in out:
            continue
        out[b] = _FIXED_COLORS.get(b) or next(spare, "#000000")
    return out


def ulp_cell(r: dict) -> tuple[str, str | None]:
    """(cell text, footnote key) of the "max ulp" column for one backend row.

    An ulp distance only means something against an oracle the row is meant to match to the bit
    (or within a few output ulps): the reference for native rows, the weight-only oracle for exact
    fallbacks that follow it (``semantics == "weight-only"``, e.g. MX on A2/A3, marked ``(w-o)``).
    A fallback that follows neither exactly (dual-scale on A2/A3 folds level-0 into the group scale)
    gets no number: its distance to the reference is the quantization error itself, and ulps of
    outputs near zero turn that into meaningless values such as 1e+39."""
    if r.get("mode") == FALLBACK_MODE:
        if r.get("semantics") == "weight-only" and r.get("vs_weight_only") is not None:
            return f"{_f(r['vs_weight_only'].get('max_ulp'))} (w-o)", "wo"
        if (r.get("vs_reference") or {}).get("identical"):  # a fallback that runs the reference math (svdq decoded)
            return _f(r["vs_reference"].get("max_ulp")), None
        return "n/a", "fallback"
    vr = r.get("vs_reference") or {}
    return _f(vr.get("max_ulp")), None


def _title(src: dict) -> str:
    d = str(src.get("description") or "").strip()
    return d[0].upper() + d[1:] if d else "parity run"


def to_markdown(rep: dict) -> str:
    src = rep["source"]
    lines = [f"# Parity report: {_title(src)}", ""]
    lines.append(f"Date {rep['date']}; torch {rep['host']['torch']} on {rep['host']['machine']}"
                 + (f", CUDA device {rep['host']['cuda_device']}" if rep["host"].get("cuda_device") else "")
                 + f"; activations {src['act_dtype']}; \"float\" = {src['float_reference']}.")
    if src.get("inputs"):
        lines.append(f"Inputs: shape {src['inputs']['shape']} ({src['inputs']['dtype']}).")
    lines.append("")
    lines.append("## Verdict")
    lines.append("")
    for tier, v in rep["verdict"].items():
        lines.append(f"- **{tier}**: {'PASS' if v['pass'] else 'FAIL'}"
                     + ("" if v["pass"] else f" ({len(v['failures'])} failure(s); first: {v['failures'][0]})"))
    lines.append("")
    lines.append("## Backends")
    lines.append("")
    lines.append("| backend | available | device | mode per scheme / reason |")
    lines.append("|---|---|---|---|")
    for b in rep["backends"]:
        if b["available"]:
            modes = "; ".join(f"{s}: {m['mode']}" + (f" ({m['reason']})" if m.get("reason") else "")
                              for s, m in b.get("modes", {}).items())
        else:
            modes = b["reason"]
        lines.append(f"| {b['name']} | {'yes' if b['available'] else 'no'} | {b['device']} | {modes} |")
    lines.append("")
    e2e = rep.get("end_to_end") or {}
    if e2e:
        lines.append("## End to end")
        lines.append("")
        img = src.get("image_like")
        hdr = "| backend | status | cos vs ref | rel L2 vs ref | cos vs float | rel L2 vs float | max abs vs float |"
        sep = "|---|---|---|---|---|---|---|"
        if img:
            hdr += " PSNR vs float (dB) |"
            sep += "---|"
        else:
            hdr += " top-1 agree vs float |"
            sep += "---|"
        hdr += " latency (ms) |"
        sep += "---|"
        lines += [hdr, sep]
        for b, r in e2e.items():
            if r.get("status") != "ok":
                lines.append(f"| {b} | {r.get('status')}: {r.get('reason') or r.get('error', '')} |" + " |" * 6)
                continue
            vr = r.get("vs_reference") or {}
            vf = r["vs_float"]
            row = (f"| {b} | ok | {_cos(vr.get('cosine'))} | {_f(vr.get('rel_l2'))} | {_cos(vf['cosine'])} | "
                   f"{_f(vf['rel_l2'])} | {_f(vf['max_abs'])} |")
            row += f" {_f(vf['psnr_db'], '.2f')} |" if img else f" {_f(vf.get('top1_agree'), '.4f')} |"
            row += f" {_f(r.get('latency_ms'), '.2f')} |"
            lines.append(row)
        if rep.get("float_latency_ms") is not None:
            lines.append("")
            lines.append(f"Float model latency (CPU, eager): {rep['float_latency_ms']:.2f} ms.")
        lines.append("")
    lines.append("## Per layer")
    lines.append("")
    lines.append("`quant` = activation quantizer bytes identical to the reference's; errors vs reference / vs float "
                 "are computed on the layer output for the same captured input.")
    lines.append("")
    lines.append("| layer | scheme | (N, K) | backend | mode | quant | max ulp vs oracle¹ | rel L2 vs ref | "
                 "cos vs float | rel L2 vs float | MAE vs float | latency (ms) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes_used: set[str] = set()
    for L in rep["layers"]:
        for b, r in L["results"].items():
            head = f"| {L['name']} | {L['scheme']} | ({L['n']}, {L['k']}) | {b} | {r.get('mode', '')} |"
            if r.get("status") != "ok":
                lines.append(head + f" {r.get('status')}: {r.get('reason') or r.get('error', '')} |" + " |" * 6)
                continue
            q = r.get("quant")
            qs = "–" if q is None else ("identical" if q["identical"] else f"DIFF {q['mismatch_frac']:.2g}")
            vr = r.get("vs_reference") or {}
            vf = r["vs_float"]
            ulp, note = ulp_cell(r) if b != "reference" else ("–", None)
            if note:
                notes_used.add(note)
            lines.append(head + f" {qs} | {ulp} | {_f(vr.get('rel_l2'))} | {_cos(vf['cosine'])} | "
                         f"{_f(vf['rel_l2'])} | {_f(vf['mae'])} | {_f(r.get('latency_ms'), '.3f')} |")
    lines.append("")
    foot = ("¹ Largest error in units of the output dtype's ulp, against the oracle the row is meant to match: "
            "the reference for native rows.")
    if "wo" in notes_used:
        foot += (" `(w-o)`: exact fallbacks that leave activations unquantized (MX on A2/A3) are measured against "
                 "the weight-only oracle (float activations x exactly decoded weights) instead.")
    if "fallback" in notes_used:
        foot += (" `n/a`: a fallback that matches neither oracle bit for bit (e.g. dual-scale on A2/A3 folds level-0 "
                 "into the group scale) has no meaningful ulp distance: its difference from the reference is the "
                 "quantization error itself, and in ulps of outputs near zero it reads as huge numbers (1e+39); "
                 "judge it by rel L2 and cosine.")
    lines.append(foot)
    if src.get("skipped_layers"):
        lines.append("")
        lines.append("Layers left float: " + "; ".join(f"`{k}`: {v}" for k, v in src["skipped_layers"].items()))
    for tier, v in rep["verdict"].items():
        if not v["pass"]:
            lines.append("")
            lines.append(f"## {tier} failures")
            lines.append("")
            lines += [f"- {f}" for f in v["failures"][:50]]
            if len(v["failures"]) > 50:
                lines.append(f"- … {len(v['failures']) - 50} more in parity.json")
    lines.append("")
    lines.append("Thresholds: see docs/parity.md (tiers `smoke` and `strict`).")
    return "\n".join(lines) + "\n"


def plot_layers(rep: dict, path: str) -> str | None:
    """Per-layer relative L2 error vs float (every backend) and vs reference; returns a message when skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"parity.png not written: matplotlib is not installed ({e}); pip install matplotlib"
    layers = rep["layers"]
    names = [L["name"] for L in layers]
    backends = []
    for L in layers:
        for b in L["results"]:
            if b not in backends:
                backends.append(b)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.45 * len(names) + 3), 8), sharex=True)
    x = list(range(len(names)))
    markers = "os^vD<>p*h"
    colors = backend_colors(backends)
    for i, b in enumerate(backends):
        vf, vr = [], []
        for L in layers:
            r = L["results"].get(b, {})
            ok = r.get("status") == "ok"
            vf.append(r["vs_float"]["rel_l2"] if ok else math.nan)
            rr = (r.get("vs_reference") or {}).get("rel_l2") if ok else None
            vr.append(math.nan if rr is None else max(rr, 1e-12))
        style = {"marker": markers[i % len(markers)], "linestyle": "-", "label": b, "alpha": 0.8, "color": colors[b]}
        axes[0].plot(x, vf, **style)
        if b != "reference":
            axes[1].plot(x, vr, **style)
    axes[0].set_ylabel("rel. L2 error vs float")
    axes[0].set_title(_title(rep["source"]))
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("rel. L2 vs reference (1e-12 = identical)")
    axes[1].grid(True, alpha=0.3)
    if len(backends) > 1:
        axes[1].legend(fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(names, rotation=75, fontsize=7, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_report(rep: dict, out_dir: str, *, plot: bool = True) -> list[str]:
    """Write the three files; returns messages (e.g. a skipped plot)."""
    os.makedirs(out_dir, exist_ok=True)
    msgs = []
    with open(os.path.join(out_dir, "parity.json"), "w") as f:
        json.dump(_clean(rep), f, indent=1, allow_nan=False)
    with open(os.path.join(out_dir, "parity.md"), "w") as f:
        f.write(to_markdown(rep))
    if plot:
        m = plot_layers(rep, os.path.join(out_dir, "parity.png"))
        if m:
            msgs.append(m)
    return msgs
