"""Quiet by default: third-party import noise hidden, our own warnings shown, --verbose shows everything."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from omni_npu_quant.cli import _quiet
from omni_npu_quant.cli.main import main

NOISE = ("Failed to load", "_pytree.py", "Failed to import from vllm", "LOAD REPORT", "Loading weights")


def _cli(*argv, env_extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "VLLM_LOGGING_LEVEL",
                        "HF_HUB_DISABLE_PROGRESS_BARS")}
    env.update({"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "omni_npu_quant.cli.main", *argv], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def minilm_dir():
    pytest.importorskip("transformers")
    from omni_npu_quant.cli.demo import minilm_dir as d

    return d()


def test_transformers_model_plan_is_quiet_and_verbose_is_not(minilm_dir):
    """Loading a transformers directory imports transformers (and through it torchao): nothing of that shows."""
    quiet = _cli("quantize", "--model", minilm_dir, "--scheme", "mxfp4_dual", "--plan")
    assert quiet.returncode == 0, quiet.stderr
    assert not [ln for ln in quiet.stderr.splitlines() if any(s in ln for s in NOISE)], quiet.stderr
    assert "layers quantized" in quiet.stdout
    # the same command with --verbose: third-party loggers are no longer raised to ERROR
    loud = _cli("--verbose", "quantize", "--model", minilm_dir, "--scheme", "mxfp4_dual", "--plan")
    assert loud.returncode == 0, loud.stderr
    assert len(loud.stderr) > len(quiet.stderr)


def test_vllm_import_is_quiet():
    code = ("import sys; from omni_npu_quant.cli import _quiet; _quiet.configure(); import vllm.model_executor.layers."
            "linear; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    env["VLLM_TARGET_DEVICE"] = "cpu"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert not [ln for ln in r.stderr.splitlines() if any(s in ln for s in NOISE)], r.stderr


def test_configure_hides_third_party_warnings_but_not_ours(monkeypatch):
    monkeypatch.setattr(_quiet, "_STATE", dict(_quiet._STATE))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        _quiet.configure(verbose=False)
        for module in ("transformers.modeling_utils", "torch.utils._pytree", "omni_npu_quant.cli.quantize"):
            warnings.warn_explicit(f"from {module}", UserWarning, "x.py", 1, module=module)
    assert [str(w.message) for w in got] == ["from omni_npu_quant.cli.quantize"]
    assert logging.getLogger("torchao").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("torch.utils._pytree").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("omni_npu_quant.backends").getEffectiveLevel() <= logging.WARNING


def test_global_flags_before_or_after_the_subcommand(capsys, monkeypatch):
    monkeypatch.setattr(_quiet, "_STATE", dict(_quiet._STATE))
    assert main(["env", "--as", "A5", "-q"]) == 0
    assert _quiet.is_quiet() and not _quiet.is_verbose()
    assert main(["--quiet", "env", "--as", "A5"]) == 0
    assert _quiet.is_quiet()
    assert main(["env", "--as", "A5"]) == 0
    assert not _quiet.is_quiet()
    capsys.readouterr()


def test_progress_is_off_without_a_terminal(monkeypatch):
    monkeypatch.setattr(_quiet, "_STATE", dict(_quiet._STATE, quiet=False))
    bar = _quiet.progress(range(3), desc="x")
    assert list(bar) == [0, 1, 2]
    assert getattr(bar, "disable", True)  # pytest captures stderr: not a TTY

    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            pass

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Tty())
    assert _quiet.progress_enabled()
    monkeypatch.setattr(_quiet, "_STATE", dict(_quiet._STATE, quiet=True))
    assert not _quiet.progress_enabled()
