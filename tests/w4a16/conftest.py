"""Fixtures of the W4A16 tests: the auto-round checkpoints (made once per session in a subprocess)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


@pytest.fixture(scope="session")
def ar(tmp_path_factory) -> dict[str, Path]:
    """``{variant: checkpoint dir}`` written by the real auto-round (``producers.VARIANTS``) plus
    ``float_llama`` and the documented-format act-order checkpoints; each holds ``oracle.safetensors``."""
    if importlib.util.find_spec("auto_round") is None:
        pytest.skip("auto-round is not installed (ci/setup.sh installs auto-round==0.16.1)")
    root = tmp_path_factory.mktemp("autoround")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(HERE / "producers.py"), str(root)], capture_output=True, text=True,
                       env=env, timeout=900, cwd=str(HERE))
    if r.returncode != 0:
        raise RuntimeError(f"auto-round producer failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return {k: Path(v) for k, v in json.loads((root / "index.json").read_text()).items()}
