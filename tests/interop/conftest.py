"""Fixtures: vllm-ascend 0.23.0's linear methods loaded from its source on the torch_npu emulator (A2); small
checkpoints of our own writer come from interop_models.py.

If vllm-ascend's source is not there the tests FAIL with the setup instruction (no skip): they are the interop oracle."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import vllm_ascend_src  # noqa: E402
from interop_models import calib_ids, tiny_llama, write_ours  # noqa: E402,F401


@pytest.fixture(scope="module")
def va_methods():
    miss = vllm_ascend_src.missing()
    if miss:
        pytest.fail(f"{vllm_ascend_src.INSTALL_HINT} (missing: {', '.join(miss)})", pytrace=False)
    from omni_npu_quant import npu_sim

    saved = vllm_ascend_src.saved_modules()
    with npu_sim.install("A2"):
        try:
            yield vllm_ascend_src.load()
        finally:
            vllm_ascend_src.restore_modules(saved)
