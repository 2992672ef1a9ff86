"""What every SVD low-rank scheme shares (not a scheme itself): a residual scheme plus a 16-bit low-rank branch.

    y = R(x) + (x . L1^T) . L2^T (+ bias)

``R`` is one of our schemes (its own stored tensors, smoothing and quantizers) holding ``W - L2 . L1``;
``svd_lowrank_l1`` is ``[rank, K]`` (V^T), ``svd_lowrank_l2`` is ``[N, rank]`` (U . S), as msModelSlim's
``svd_res`` processor stores them (docs/svd.md section 1).  The branch sees the layer input unsmoothed and
unquantized.  Reference numerics: the hidden ``x . L1^T`` is accumulated in fp32 and rounded to the activation
dtype; the up-projection is accumulated in fp32 and added to the residual output (bias included: nunchaku's
epilogue order).

A per-label scheme is a subclass that names its residual (``residual_cls``) and registers itself; the scheme
facts (K rule, packing, calibration needs, ...) are copied from the residual class.  Constructor options other
than ``rank`` are the residual's options (``act_round_mode=...``).  ``rank=None`` (the default): a checkpoint's rank
is read from its tensors and online quantization uses ``DEFAULT_RANK``; an explicit ``rank`` is also a shape rule
(layers with min(N, K) < rank are refused with that reason, so ``quantize_`` keeps them float).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from .base import Scheme, SchemeValidationError, TensorSpec

F32 = torch.float32
L1, L2 = "svd_lowrank_l1", "svd_lowrank_l2"
LOWRANK = (L1, L2)
LOWRANK_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DEFAULT_RANK = 32  # msModelSlim svd_res's default
_FACTS = ("weight_bits", "needs_calibration", "weight_only", "bias_in_quant_bias", "per_group_scales",
          "row_amax_weight_scale", "k_multiple")

__all__ = ["SVDScheme", "L1", "L2", "LOWRANK", "svd_factors", "lowrank_branch"]


def svd_factors(weight: torch.Tensor, rank: int, *, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of a float (N, K) weight: (L1 = V^T [rank, K], L2 = U.S [N, rank]), fp32.

    Deterministic: the top eigenvectors of the smaller Gram matrix in float64 (``torch.linalg.eigh``), i.e. the best
    rank-``rank`` approximation (Eckart-Young) to ~1e-7 relative; msModelSlim uses the randomized
    ``torch.svd_lowrank`` (seed 42), whose factors are close to but not equal to these."""
    loc = f"{where}: " if where else ""
    n, k = weight.shape
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"{loc}rank must be a positive integer, got {rank!r}")
    if rank > min(n, k):
        raise ValueError(f"{loc}rank {rank} exceeds min(out_features, in_features) = {min(n, k)} for weight {[n, k]}")
    w = weight.to(torch.float64)
    if k <= n:
        _, vecs = torch.linalg.eigh(w.t() @ w)  # ascending
        v = vecs[:, -rank:].flip(-1)  # (K, r), orthonormal
        return v.t().contiguous().to(F32), (w @ v).contiguous().to(F32)
    vals, vecs = torch.linalg.eigh(w @ w.t())
    u = vecs[:, -rank:].flip(-1)  # (N, r)
    sv = vals[-rank:].flip(-1).clamp_min(0).sqrt()
    keep = sv > 1e-12 * sv.max().clamp_min(1e-300)
    l1 = torch.where(keep.unsqueeze(-1), (u.t() @ w) / sv.clamp_min(1e-300).unsqueeze(-1), torch.zeros(()))
    return l1.contiguous().to(F32), (u * sv).contiguous().to(F32)


def lowrank_branch(x2: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, act_dtype: torch.dtype) -> torch.Tensor:
    """The reference branch: fp32 (M, N) = round_act(x . L1^T) . L2^T, both products fp32-accumulated."""
    h = torch.matmul(x2.to(F32), l1.to(F32).t()).to(act_dtype)
    return torch.matmul(h.to(F32), l2.to(F32).t())


class SVDScheme(Scheme):
    """Base of the per-label SVD schemes.  Subclasses set ``name``, ``label`` and ``residual_cls``."""

    residual_cls: ClassVar[type[Scheme] | None] = None
    svd_lowrank: ClassVar[bool] = True
    float_suffixes: ClassVar[tuple[str, ...]] = LOWRANK  # stored FLOAT-labelled beside the weight (msModelSlim)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        res = cls.residual_cls
        if res is not None:
            for fact in _FACTS:
                setattr(cls, fact, getattr(res, fact))
            cls.order = res.order + 1

    def __init__(self, rank: int | None = None, **residual_options):
        if type(self).residual_cls is None:
            raise TypeError(f"{type(self).__name__} names no residual scheme")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0):
            raise ValueError(f"scheme {self.name}: rank must be a positive integer, got {rank!r}")
        self.rank = rank
        self.residual = type(self).residual_cls(**residual_options)

    def __getattr__(self, attr):
        # the residual's constructor options (act_round_mode, ...) read through, nothing else
        if attr != "residual" and "residual" in self.__dict__ and attr in self.residual.describe() \
                and attr not in ("name", "label"):
            return getattr(self.residual, attr)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {attr!r}")

    def __eq__(self, other):
        return type(self) is type(other) and self.rank == other.rank and self.residual == other.residual

    def __hash__(self):
        return hash((type(self).__name__, self.rank))

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, residual={self.residual!r})"

    # ---- tensor sets --------------------------------------------------------------------
    @staticmethod
    def split(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None,
                                                           torch.Tensor | None]:
        """(residual tensor set, L1 or None, L2 or None)."""
        res = {s: t for s, t in tensors.items() if s not in LOWRANK}
        return res, tensors.get(L1), tensors.get(L2)

    @property
    def online_rank(self) -> int:
        return self.rank if self.rank is not None else DEFAULT_RANK

    def rank_of(self, tensors: dict[str, torch.Tensor]) -> int:
        l1, l2 = tensors.get(L1), tensors.get(L2)
        if l1 is not None and l1.dim() == 2:
            return int(l1.shape[0])
        if l2 is not None and l2.dim() == 2:
            return int(l2.shape[1])
        return self.online_rank

    def tensor_specs(self, n, k, *, has_bias=False, rank: int | None = None):
        r = self.online_rank if rank is None else rank
        return self.residual.tensor_specs(n, k, has_bias=has_bias) + self._lowrank_specs(n, k, r)

    @staticmethod
    def _lowrank_specs(n, k, r):
        return [TensorSpec(L1, LOWRANK_DTYPES, (r, k), input_dim=1, doc="V^T of the SVD, 16-bit (FLOAT label)"),
                TensorSpec(L2, LOWRANK_DTYPES, (n, r), output_dim=0, doc="U.S of the SVD, 16-bit (FLOAT label)")]

    def specs_for(self, tensors, n, k):
        res, _, _ = self.split(tensors)
        return self.residual.specs_for(res, n, k) + self._lowrank_specs(n, k, self.rank_of(tensors))

    def k_from_weight_cols(self, cols):
        return self.residual.k_from_weight_cols(cols)

    def infer_shape(self, tensors):
        return self.residual.infer_shape(self.split(tensors)[0])

    def shape_problem(self, n, k):
        bad = self.residual.shape_problem(n, k)
        if bad is None and self.rank is not None and min(n, k) < self.rank:
            return f"{self.name} rank {self.rank} needs min(N, K) >= {self.rank}, got N={n}, K={k}"
        return bad

    def check_values(self, tensors, n, k, loc):
        res, l1, l2 = self.split(tensors)
        self.residual.check_values(res, n, k, loc)
        r = self.rank_of(tensors)
        if r <= 0 or r > min(n, k):
            raise SchemeValidationError(f"{loc}low-rank rank {r} must be in 1..min(N, K) = {min(n, k)}")
        for name, t in ((L1, l1), (L2, l2)):
            if t is not None and not bool(torch.isfinite(t.float()).all()):
                raise SchemeValidationError(f"{loc}tensor '{name}' holds non-finite values")

    # ---- quantization ---------------------------------------------------------------------
    def quantize_weight(self, weight, bias=None, **calib):
        l1, l2 = svd_factors(weight, self.online_rank)
        lowrank_dtype = weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        l1, l2 = l1.to(lowrank_dtype), l2.to(lowrank_dtype)
        residual = weight.to(F32) - l2.to(F32) @ l1.to(F32)  # what the stored 16-bit factors do not represent
        out = self.residual.quantize_weight(residual, bias, **calib)
        out[L1], out[L2] = l1, l2
        return out

    def dequantize_weight(self, tensors, k=None):
        res, l1, l2 = self.split(tensors)
        return self.residual.dequantize_weight(res, k) + l2.to(F32) @ l1.to(F32)

    def describe(self):
        d = self.residual.describe()
        return {**d, "name": self.name, "label": self.label, "residual": self.residual.name, "rank": self.rank}
