"""msModelSlim ``W8A8_MXFP8_SVD``: SVD low-rank branch + a W8A8_MXFP8 residual.

Stored: the mxfp8 residual's tensors plus ``svd_lowrank_l1`` [rank, K] and ``svd_lowrank_l2`` [N, rank] (FLOAT);
the saver's label rule and the semantics are in docs/svd.md section 1."""
from __future__ import annotations

from .registry import register_scheme
from .svd_base import SVDScheme
from .mxfp8 import MXFP8


@register_scheme()
class MXFP8SVD(SVDScheme):
    name = "mxfp8_svd"
    label = "W8A8_MXFP8_SVD"
    residual_cls = MXFP8
