"""msModelSlim ``W4A4_MXFP4_DUALSCALE_SVD``: SVD low-rank branch + a W4A4_MXFP4_DUALSCALE residual.

Stored: the mxfp4_dual residual's tensors plus ``svd_lowrank_l1`` [rank, K] and ``svd_lowrank_l2`` [N, rank] (FLOAT);
the saver's label rule and the semantics are in docs/svd.md section 1."""
from __future__ import annotations

from .registry import register_scheme
from .svd_base import SVDScheme
from .mxfp4_dual import MXFP4Dual


@register_scheme()
class MXFP4DualSVD(SVDScheme):
    name = "mxfp4_dual_svd"
    label = "W4A4_MXFP4_DUALSCALE_SVD"
    residual_cls = MXFP4Dual
