"""Console hygiene for ``omni-npu-quant``: third-party import noise hidden by default, progress bars.

``configure(verbose, quiet)`` is called once by ``cli/main.py`` before any subcommand module (and so
torch, transformers, vLLM ...) is imported.  Without ``--verbose`` it

* sets the verbosity environment variables that transformers, diffusers and vLLM read when they are
  imported (only where the user has not set them),
* raises the level of the named third-party loggers to ERROR (torchao's ``.so`` load failures,
  torch's pytree deprecations, vLLM's "Failed to import from vllm._C..." ...),
* ignores Python warnings attributed to third-party modules.

Our own loggers (``omni_npu_quant.*``) and our own warnings are left alone: they still show.
No file-descriptor-level redirection is needed: every message seen on this stack (torchao, torch's
pytree, vLLM, transformers, diffusers) goes through Python logging or warnings.

``progress(iterable, total=, desc=)`` wraps tqdm: to stderr, with an ETA, disabled when stderr is not a
terminal or with ``--quiet``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

__all__ = ["configure", "is_verbose", "is_quiet", "progress", "progress_enabled", "THIRD_PARTY_LOGGERS"]

# loggers of the packages whose import-time chatter reaches our users
THIRD_PARTY_LOGGERS = (
    "torch", "torch.utils._pytree", "torch._dynamo", "torch._inductor", "torchao", "transformers", "diffusers",
    "vllm", "msmodelslim", "huggingface_hub", "accelerate", "triton", "sentence_transformers", "safetensors",
    "urllib3", "matplotlib", "PIL",
)
# modules whose Python warnings are hidden by default (regex matched against the warning's module)
_THIRD_PARTY_MODULES = (r"(torch|torchao|transformers|diffusers|vllm|msmodelslim|huggingface_hub|accelerate|"
                        r"triton|sentence_transformers|safetensors|matplotlib|numpy|google|pydantic|xgrammar)(\.|$)")
# variables read by those packages at import time (set only when the user did not)
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar
    "TORCH_CPP_LOG_LEVEL": "ERROR",
}

_STATE = {"verbose": False, "quiet": False, "configured": False}


def configure(verbose: bool = False, quiet: bool = False) -> None:
    """Apply the console policy for this process (idempotent; the last call wins for the flags)."""
    _STATE["verbose"], _STATE["quiet"] = bool(verbose), bool(quiet)
    ours = logging.getLogger("omni_npu_quant")
    if verbose:
        ours.setLevel(logging.INFO)
        if not ours.handlers and not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        _STATE["configured"] = True
        return
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=_THIRD_PARTY_MODULES)
    # libraries already imported read their verbosity at import time: tell them directly
    tf = sys.modules.get("transformers")
    if tf is not None:
        with contextlib.suppress(Exception):
            tf.logging.set_verbosity_error()
            tf.logging.disable_progress_bar()
    df = sys.modules.get("diffusers")
    if df is not None:
        with contextlib.suppress(Exception):
            df.logging.set_verbosity_error()
    _STATE["configured"] = True


def is_verbose() -> bool:
    return _STATE["verbose"]


def is_quiet() -> bool:
    return _STATE["quiet"]


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", leave: bool = False):
    """A tqdm bar on stderr with an ETA; a silent pass-through when stderr is no terminal or with ``--quiet``."""
    disable = _STATE["quiet"] or not _isatty(sys.stderr)
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        return _NoBar(iterable)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, disable=disable,
                dynamic_ncols=True)


def progress_enabled() -> bool:
    return not _STATE["quiet"] and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _NoBar:
    def __init__(self, iterable):
        self._it = iterable

    def __iter__(self):
        return iter(self._it if self._it is not None else ())

    def update(self, n=1):
        pass

    def set_postfix_str(self, s="", refresh=True):
        pass

    def set_description_str(self, desc=None, refresh=True):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
