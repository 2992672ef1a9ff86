"""msModelSlim ``W4A8_MXFP_SVD``: SVD low-rank branch + a W4A8_MXFP residual.

Stored: the w4a8_mxfp residual's tensors plus ``svd_lowrank_l1`` [rank, K] and ``svd_lowrank_l2`` [N, rank] (FLOAT);
the saver's label rule and the semantics are in docs/svd.md section 1."""
from __future__ import annotations

from .registry import register_scheme
from .svd_base import SVDScheme
from .w4a8_mxfp import W4A8MXFP


@register_scheme()
class W4A8MXFPSVD(SVDScheme):
    name = "w4a8_mxfp_svd"
    label = "W4A8_MXFP_SVD"
    residual_cls = W4A8MXFP
