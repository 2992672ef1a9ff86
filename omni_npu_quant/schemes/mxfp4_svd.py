"""msModelSlim ``W4A4_MXFP4_SVD``: SVD low-rank branch + a W4A4_MXFP4 residual.

Stored: the mxfp4 residual's tensors plus ``svd_lowrank_l1`` [rank, K] and ``svd_lowrank_l2`` [N, rank] (FLOAT);
the saver's label rule and the semantics are in docs/svd.md section 1."""
from __future__ import annotations

from .registry import register_scheme
from .svd_base import SVDScheme
from .mxfp4 import MXFP4


@register_scheme()
class MXFP4SVD(SVDScheme):
    name = "mxfp4_svd"
    label = "W4A4_MXFP4_SVD"
    residual_cls = MXFP4
