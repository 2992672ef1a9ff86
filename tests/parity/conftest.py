"""Shared helpers for the parity tests: which backends exist on this machine.

On a CPU machine: ``reference`` plus the NPU emulator profiles; on a GPU machine ``cuda`` as well.
A backend that the registry cannot construct here is left out with its reason printed once.
"""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.parity.backends import resolve_backend

CANDIDATES = ("reference", "npu-sim:A2", "npu-sim:A3", "npu-sim:A5", "cuda", "npu")


def _present() -> list[str]:
    out = []
    for n in CANDIDATES:
        st = resolve_backend(n)
        if st.available:
            out.append(n)
        else:
            print(f"[parity tests] backend {n} not present: {st.reason}")
    return out


PRESENT = _present()
OTHERS = [n for n in PRESENT if n != "reference"]


def pytest_report_header(config):
    return f"parity backends present: {', '.join(PRESENT)}"


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
