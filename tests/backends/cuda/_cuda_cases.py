"""Shared inputs of the CUDA backend tests: random data plus edge cases (ties, saturation,
subnormals, zeros, NaN/Inf) for the quantizers."""
from __future__ import annotations

import torch


def edge_rows(k: int, dtype: torch.dtype, *, subnormals: bool = True, nonfinite: bool = True,
              seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randn(k, generator=g) * 3, torch.zeros(k), torch.randn(k, generator=g) * 1e4]
    ties = torch.randn(k, generator=g).sign() * (torch.randint(0, 16, (k,), generator=g).float() + 0.5) / 8.0
    ties[::32] = 6.0  # block max 6 -> elements at exact half steps of E2M1 / E4M3 / int8
    rows.append(ties)
    sat = torch.randn(k, generator=g)
    sat[::32] = 7.9  # FLOOR: values in (6, 8) saturate to 6 for E2M1
    rows.append(sat)
    half = torch.randn(k, generator=g)
    half[5::32] = -0.0
    rows.append(half)
    if subnormals and dtype != torch.float16:
        sub = torch.randn(k, generator=g) * 1e-39
        sub[: min(k, 32)] = 1e-40
        rows.append(sub)
    if nonfinite:
        nf = torch.randn(k, generator=g)
        nf[min(3, k - 1)] = float("nan")
        if k > 40:
            nf[40] = float("inf")
        rows.append(nf)
        inf_row = torch.randn(k, generator=g)
        inf_row[k // 2] = float("-inf")
        rows.append(inf_row)
    return torch.stack(rows).to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Byte equality, except that any NaN equals any NaN (payloads are not part of the contract)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() and a.dtype != torch.float8_e4m3fn:
        na, nb = torch.isnan(a), torch.isnan(b)
        if not torch.equal(na, nb):
            return False
        a, b = torch.where(na, torch.zeros_like(a), a), torch.where(nb, torch.zeros_like(b), b)
    if a.dtype in (torch.float32,):
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.equal(a.view(torch.int16), b.view(torch.int16))
    if a.dtype == torch.float8_e4m3fn:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)
