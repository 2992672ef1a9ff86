"""``omni-npu-quant``: one entry point, one module per subcommand (imported lazily).

Global options (before or after the subcommand): ``--verbose`` shows third-party import warnings and
log messages (hidden by default; ours always show) and our INFO logs; ``-q/--quiet`` hides progress bars
and progress messages.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import _quiet

# subcommand -> (module under omni_npu_quant.cli, one-line help)
COMMANDS = {
    "demo": ("demo", "quantize all-MiniLM-L6-v2 (or a tiny model) with every scheme on reference, A2 and A5; table"),
    "env": ("env", "show the detected device and the scheme x backend capability matrix"),
    "inspect": ("inspect", "validate and describe an msModelSlim / omni_npu_quant checkpoint"),
    "quantize": ("quantize", "quantize a model online (or print the plan with --plan)"),
    "calibrate": ("calibrate", "offline calibration (dual-scale mul_scale, static ranges) -> AscendV1 checkpoint"),
    "parity": ("parity", "compare backends layer by layer on the same inputs"),
    "bench": ("bench", "benchmark each scheme's linear against bf16 (GPU)"),
    "trajectory": ("trajectory", "diffusion pipelines: full denoise loop float vs quantized, image metrics; "
                                 "--search-ignored proposes ignored_layers"),
}

_DESCRIPTION = """Quantize models for Ascend NPUs (and CUDA GPUs, with an exact CPU reference).

Start with `omni-npu-quant demo` (the real all-MiniLM-L6-v2 with every scheme on reference, A2 and A5).
Global flags go before or after the subcommand: --verbose shows third-party warnings and log messages
(hidden by default; ours always show), -q/--quiet hides progress bars."""

_VERBOSE_HELP = "show third-party warnings and log messages (hidden by default) and our INFO messages"
_QUIET_HELP = "no progress bars or progress messages"


def _add_global_flags(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--verbose / -q --quiet; on a subparser their default is SUPPRESS so the top-level value survives."""
    kw = {} if top else {"default": argparse.SUPPRESS}
    for flags, dest, help_ in ((("--verbose",), "verbose", _VERBOSE_HELP), (("-q", "--quiet"), "quiet", _QUIET_HELP)):
        try:
            p.add_argument(*flags, dest=dest, action="store_true", help=help_, **kw)
        except argparse.ArgumentError:  # the subcommand defines it itself
            pass


def _prescan(argv: list[str]) -> tuple[bool, bool]:
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--verbose" in head, ("--quiet" in head or "-q" in head)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose, quiet = _prescan(argv)
    _quiet.configure(verbose=verbose, quiet=quiet)  # before any subcommand (and third-party) import
    parser = argparse.ArgumentParser(prog="omni-npu-quant", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in argv if not a.startswith("-")), None)
    chosen = chosen if chosen in COMMANDS else None
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:
            module = importlib.import_module(f"omni_npu_quant.cli.{mod}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        _add_global_flags(p, top=False)
    args = parser.parse_args(argv)
    _quiet.configure(verbose=args.verbose, quiet=args.quiet)
    try:
        return int(args._run(args) or 0)
    except ValueError as e:  # a bad OMNI_NPU_QUANT_NPU_SIM is a usage error: one line, exit 2, no traceback
        sim = sys.modules.get("omni_npu_quant.npu_sim")
        if sim is None or not isinstance(e, sim.NpuSimEnvError):
            raise
        print(f"omni-npu-quant: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
