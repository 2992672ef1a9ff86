"""Test-wide fixtures: seeded generators, and the `gpu` marker's skip rule.  Nothing else global."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed() -> int:
    return 1234


@pytest.fixture
def gen(seed) -> torch.Generator:
    """A fresh seeded torch CPU generator per test."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def rng(seed) -> np.random.Generator:
    """A fresh seeded NumPy generator per test."""
    return np.random.default_rng(seed)
