"""What the reference kernels share: their mode, the bounded row-chunk walk, tensor moves."""
from __future__ import annotations

from typing import Callable

import torch

from ..base import FALLBACK, NATIVE, LinearKernel

CHUNK_ELEMENTS = 1 << 24  # decode at most this many weight elements at a time (64 MB in fp32)


class ReferenceKernel(LinearKernel):
    device_kind = "cpu"
    verified = "tested on CPU"

    @classmethod
    def is_supported(cls, device):
        if device.kind == "cuda" and device.probed and device.family is None and not device.interpreted:
            return False, device.detail or "no CUDA device"
        return True, ""

    def mode(self, scheme):
        if self.target.kind == "cpu":
            return NATIVE, self.summary
        return FALLBACK, f"exact reference math on the {self.target.kind.upper()} (no dedicated kernel): {self.summary}"

    def to_dev(self, t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        if t is None:
            return None
        return t.to(self.dev) if dtype is None else t.to(self.dev, dtype)


def by_row_chunks(n: int, k: int, compute: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``compute(rows)`` -> (M, len(rows)) for output-row slices small enough to decode at once;
    concatenated along N.  A layer under ``CHUNK_ELEMENTS`` weights is computed in one piece."""
    step = max(1, CHUNK_ELEMENTS // max(1, k))
    if step >= n:
        return compute(slice(0, n))
    return torch.cat([compute(slice(i, min(n, i + step))) for i in range(0, n, step)], dim=-1)
