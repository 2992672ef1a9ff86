"""The calibration report, written next to the checkpoint as JSON and Markdown."""
from __future__ import annotations

__all__ = ["REPORT_JSON", "REPORT_MD", "render_markdown"]

REPORT_JSON = "calibration_report.json"
REPORT_MD = "calibration_report.md"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.3f} %"


def render_markdown(rep: dict) -> str:
    lines = [
        f"# Calibration report: {rep['scheme']} ({rep['label']})",
        "",
        f"- producer: `{rep['producer']}` {rep['version']}, recipe hash `{rep['recipe_hash'][:16]}`",
        f"- model: {rep['model']['kind']} (`{rep['model']['identity']}`), dtype {rep['model']['dtype']}",
        f"- data: {rep['data']['source']} (digest `{rep['data']['digest']}`)",
        f"- smoothing: {'on' if rep['smooth']['enabled'] else 'off'}; alphas {rep['smooth']['alphas']}, "
        f"clamps {rep['smooth']['clamps']}, scale_min {rep['smooth']['scale_min']:g}",
        f"- metric: {rep['error_metric']}",
        "",
    ]
    me = rep.get("model_error")
    if me:
        gain = 100.0 * (1.0 - me["calibrated"] / me["identity"]) if me["identity"] else 0.0
        lines += ["## Model output error (relative L2 against the float model)", "",
                  "| mul_scale = 1 | calibrated | reduction | data |", "|---|---|---|---|",
                  f"| {_pct(me['identity'])} | {_pct(me['calibrated'])} | {gain:.1f} % | {me['eval_data']}, "
                  f"{me['calls']} call(s) |", ""]
        if not me.get("improved", True):
            lines += ["**Warning: calibration did not improve the model output error.** Try other alphas, more "
                      "calibration data, or no smoothing.", ""]
    lines += ["## Layers", "", "| layer | N | K | group | choice | error before | error after |",
              "|---|---|---|---|---|---|---|"]
    for r in rep["layers"]:
        grp = "" if r["group"] == r["name"] else r["group"].rsplit(".", 1)[-1] + " group"
        lines.append(f"| `{r['name']}` | {r['n']} | {r['k']} | {grp} | {r['choice']} | {_pct(r['err_before'])} | "
                     f"{_pct(r['err_after'])} |")
    lines += ["", "## Kept float", ""]
    if rep["kept_float"]:
        lines += ["| layer | reason |", "|---|---|"] + [f"| `{k['name']}` | {k['reason']} |" for k in rep["kept_float"]]
    else:
        lines.append("none")
    lines.append("")
    return "\n".join(lines)
