"""``omni-npu-quant env``: the detected device and the scheme x backend capability table.

``--as A2|A3|A5|310P|sm80|sm89|sm90|sm100|sm120|cpu|npu-sim:A5`` prints the table of another device;
``--all`` prints every device (the matrix in docs/hardware.md); ``--markdown`` prints Markdown.
"""
from __future__ import annotations

import os

from .. import platform as P
from ..backends.capability import capability_row, capability_rows
from ..schemes.registry import SCHEMES

__all__ = ["add_arguments", "run", "render_table", "render_matrix"]


def add_arguments(parser) -> None:
    parser.add_argument("--as", dest="as_device", metavar="DEVICE",
                        help="show the table for this device family instead of this machine "
                             f"({', '.join(P.DEVICE_FAMILIES)}, npu-sim:A2|A3|A5)")
    parser.add_argument("--all", action="store_true", help="print the full scheme x device matrix")
    parser.add_argument("--markdown", action="store_true", help="Markdown output (docs/hardware.md)")


def render_table(family: str | None, markdown: bool = False) -> str:
    rows = capability_rows(family) if family else [(s, capability_row(s, family)) for s in SCHEMES]
    if markdown:
        out = ["| scheme | backend | kernel | mode | how | verified |", "|---|---|---|---|---|---|"]
        out += [f"| {s} | {r.backend} | {r.kernel or '-'} | {r.mode} | {r.reason} | {r.verified} |" for s, r in rows]
        return "\n".join(out)
    w = max(len(s) for s, _ in rows)
    kw = max([len(r.kernel) for _, r in rows] + [6])
    out = [f"{'scheme':<{w}}  {'backend':<9}  {'kernel':<{kw}}  {'mode':<14}  reason  [verified]"]
    out += [f"{s:<{w}}  {r.backend:<9}  {r.kernel or '-':<{kw}}  {r.mode:<14}  {r.reason}  [{r.verified}]"
            for s, r in rows]
    return "\n".join(out)


def render_matrix() -> str:
    """Markdown matrix: schemes x device families, cells = mode (backend)."""
    short = {"native": "native", "exact fallback": "exact fallback", "unsupported": "unsupported"}
    head = "| scheme | " + " | ".join(P.DEVICE_FAMILIES) + " |"
    out = [head, "|---|" + "---|" * len(P.DEVICE_FAMILIES)]
    for s in SCHEMES:
        cells = [short[capability_row(s, f).mode] for f in P.DEVICE_FAMILIES]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


FAMILY_TITLES = {
    "A2": "Atlas A2 (Ascend 910B, soc_version 220-225)", "A3": "Atlas A3 (Ascend 910_93, 250-255)",
    "A5": "Ascend 950PR/DT (260)", "310P": "Atlas 300I (310P, 200-205)", "sm80": "NVIDIA SM80/86/87 (A100, A10, ...)",
    "sm89": "NVIDIA SM89 (L40S, RTX 40)", "sm90": "NVIDIA SM90 (H100/H200)", "sm100": "NVIDIA SM100/103 (B200/B300)",
    "sm120": "NVIDIA SM120/121 (RTX 50, RTX PRO 6000, GB10)", "cpu": "CPU (any, and any device without a row)",
}


def render_all(markdown: bool) -> str:
    """The full matrix and every device's table (the generated part of docs/hardware.md with --markdown)."""
    parts = ["## Summary\n\n" + render_matrix() if markdown else render_matrix()]
    for fam in P.DEVICE_FAMILIES:
        head = f"## {FAMILY_TITLES.get(fam, fam)}\n" if markdown else f"== {fam} =="
        parts.append(head + "\n" + render_table(fam, markdown))
    return "\n\n".join(parts)


def run(args) -> int:
    if args.all:
        print(render_all(args.markdown))
        return 0
    if args.as_device:
        dev = P.device_from_name(args.as_device)
        print(f"device (as requested): {dev.label}")
    else:
        dev = P.detect_device()
        print(f"device: {dev.label}  name={dev.name!r}" + (f"  ({dev.detail})" if dev.detail else ""))
        for env in (P.BACKEND_ENV, P.NPU_SIM_ENV):
            if os.environ.get(env):
                print(f"{env}={os.environ[env]}")
    if dev.family is None:
        print(f"unknown {dev.kind} model: no capability row; backends fall back to 'reference'")
        return 0
    print(render_table(dev.family, args.markdown))
    if not args.as_device:
        from ..backends.registry import select_backend

        print("\nselected backend per scheme on this machine:")
        for s in SCHEMES:
            try:
                be, cap = select_backend(s)
                print(f"  {s:<13} -> {be.name} / {cap.kernel} ({cap.mode})")
                for kname, why in cap.refusals:
                    print(f"  {'':<13}    refused {kname}: {why}")
            except Exception as e:  # show, do not crash the report
                print(f"  {s:<13} -> error: {e}")
    return 0
