"""Error metrics for parity reports (pure torch, computed in float64 on CPU).

``compare(out, ref)`` returns one flat dict per pair of tensors: cosine similarity, relative L2
(``||out - ref|| / ||ref||``), max abs error, MAE, PSNR (peak = dynamic range of ``ref``), the
largest error in units of the reference's output-dtype ulp (``max_ulp``), the normwise error
``max_abs / max|ref|`` and a count of non-finite values that the reference does not have.
``compare_bytes(got, ref)`` compares two quantizer outputs (dicts of tensors) byte for byte.
"""
from __future__ import annotations

import math

import torch

__all__ = ["compare", "compare_bytes", "ulp"]


def ulp(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` at each |ref| value (float64), the smallest subnormal spacing at 0."""
    r = ref.to(dtype).abs()
    up = torch.nextafter(r, torch.full_like(r, float("inf")))
    sp = (up.double() - r.double())
    return torch.where(torch.isfinite(sp), sp, torch.full_like(sp, float("inf")))


def compare(out: torch.Tensor, ref: torch.Tensor, *, out_dtype: torch.dtype | None = None) -> dict:
    """Metrics of ``out`` against ``ref`` (same shape).  ``out_dtype`` sets the ulp unit (default ``ref.dtype``)."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"compare: shape {list(out.shape)} vs reference {list(ref.shape)}")
    unit_dtype = out_dtype or ref.dtype
    o = out.detach().cpu().reshape(-1).double()
    r = ref.detach().cpu().reshape(-1).double()
    fin_r = torch.isfinite(r)
    new_nonfinite = int((~torch.isfinite(o) & fin_r).sum())
    mask = fin_r & torch.isfinite(o)
    o_m, r_m = o[mask], r[mask]
    d = o_m - r_m
    n = int(mask.sum())
    ref_norm = float(r_m.norm()) if n else 0.0
    err_norm = float(d.norm()) if n else 0.0
    out_norm = float(o_m.norm()) if n else 0.0
    if ref_norm == 0.0 and out_norm == 0.0:
        cos = 1.0
    elif ref_norm == 0.0 or out_norm == 0.0:
        cos = 0.0
    else:
        cos = float((o_m @ r_m) / (ref_norm * out_norm))
    rel = 0.0 if err_norm == 0.0 else (err_norm / ref_norm if ref_norm else math.inf)
    max_abs = float(d.abs().max()) if n else 0.0
    mae = float(d.abs().mean()) if n else 0.0
    ref_max = float(r_m.abs().max()) if n else 0.0
    mse = float((d * d).mean()) if n else 0.0
    peak = float(r_m.max() - r_m.min()) if n else 0.0
    psnr = math.inf if mse == 0.0 else (10.0 * math.log10(peak * peak / mse) if peak > 0 else -math.inf)
    if unit_dtype.is_floating_point and n:
        u = ulp(ref.detach().cpu().reshape(-1)[mask], unit_dtype)
        max_ulp = float((d.abs() / u).max())
    else:
        max_ulp = max_abs
    return {
        "cosine": cos,
        "rel_l2": rel,
        "max_abs": max_abs,
        "mae": mae,
        "psnr_db": psnr,
        "max_ulp": max_ulp,
        "normwise": (max_abs / ref_max) if ref_max else (0.0 if max_abs == 0.0 else math.inf),
        "identical": bool(n == o.numel() and max_abs == 0.0 and new_nonfinite == 0
                          and bool((torch.isnan(o) == torch.isnan(r)).all())),
        "new_nonfinite": new_nonfinite,
        "numel": int(o.numel()),
    }


def compare_bytes(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict:
    """Byte-level comparison of two quantizer outputs.

    Returns ``{"identical": bool, "mismatch_frac": float, "keys": {key: {...}}}``; a missing key,
    a dtype or a shape difference counts as a full mismatch of that tensor.
    """
    keys = sorted(set(got) | set(ref))
    per: dict[str, dict] = {}
    bad = total = 0
    for k in keys:
        g, r = got.get(k), ref.get(k)
        if r is None or g is None:
            nb = int((r if r is not None else g).numel())
            per[k] = {"identical": False, "why": "missing in " + ("backend" if g is None else "reference"), "bytes": nb}
            bad, total = bad + nb, total + nb
            continue
        g, r = g.detach().cpu().contiguous(), r.detach().cpu().contiguous()
        if g.dtype != r.dtype or tuple(g.shape) != tuple(r.shape):
            nb = int(r.numel() * r.element_size())
            per[k] = {"identical": False, "why": f"{g.dtype} {list(g.shape)} vs reference {r.dtype} {list(r.shape)}",
                      "bytes": nb}
            bad, total = bad + nb, total + nb
            continue
        gb = g.reshape(-1).view(torch.uint8)
        rb = r.reshape(-1).view(torch.uint8)
        nbad = int((gb != rb).sum())
        per[k] = {"identical": nbad == 0, "mismatched_bytes": nbad, "bytes": int(rb.numel()),
                  "dtype": str(r.dtype).replace("torch.", ""), "shape": list(r.shape)}
        bad, total = bad + nbad, total + int(rb.numel())
    return {"identical": bad == 0, "mismatch_frac": (bad / total) if total else 0.0, "keys": per}
