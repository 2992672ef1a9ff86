"""``omni-npu-quant``: one entry point, one module per subcommand (imported lazily)."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under omni_npu_quant.cli, one-line help)
COMMANDS = {
    "demo": ("demo", "quantize a built-in tiny model with every scheme and print the error table"),
    "env": ("env", "show the detected device and the scheme x backend capability matrix"),
    "inspect": ("inspect", "validate and describe an msModelSlim / omni_npu_quant checkpoint"),
    "quantize": ("quantize", "quantize a model online (or print the plan with --plan)"),
    "calibrate": ("calibrate", "offline calibration (dual-scale mul_scale, static ranges) -> AscendV1 checkpoint"),
    "parity": ("parity", "compare backends layer by layer on the same inputs"),
    "bench": ("bench", "benchmark each scheme's linear against bf16 (GPU)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="omni-npu-quant", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:
            module = importlib.import_module(f"omni_npu_quant.cli.{mod}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
