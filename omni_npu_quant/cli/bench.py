"""``omni-npu-quant bench``: time each scheme's linear on the CUDA backend against bf16 (GPU only).

Thin wrapper over ``tools/bench_linear.py`` (found next to the package in a source checkout).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _load_tool():
    path = Path(__file__).resolve().parents[2] / "tools" / "bench_linear.py"
    if not path.is_file():
        raise SystemExit(f"omni-npu-quant bench: {path} not found; run from a source checkout of omni_npu_quant")
    spec = importlib.util.spec_from_file_location("omni_npu_quant_bench_linear", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="4096,8192", help="N=K values (default 4096,8192)")
    parser.add_argument("--ms", default="1,16,128,2048,8192", help="M values (default 1,16,128,2048,8192)")
    parser.add_argument("--schemes", default="w8a8_dynamic,w8a8_static,mxfp8,mxfp4,w4a8_mxfp,mxfp4_dual")
    parser.add_argument("--prefill-modes", default="dequant,dot_scaled")
    parser.add_argument("--rep-ms", type=int, default=40)
    parser.add_argument("--out", default="", help="JSON output path")


def run(args) -> int:
    mod = _load_tool()
    argv = ["--sizes", args.sizes, "--ms", args.ms, "--schemes", args.schemes, "--prefill-modes", args.prefill_modes,
            "--rep-ms", str(args.rep_ms)]
    if args.out:
        argv += ["--out", args.out]
    return int(mod.main(argv) or 0)
