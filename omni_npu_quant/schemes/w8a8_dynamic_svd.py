"""msModelSlim ``W8A8_SVD_DYNAMIC``: SVD low-rank branch + a W8A8_DYNAMIC residual.

Stored: the w8a8_dynamic residual's tensors plus ``svd_lowrank_l1`` [rank, K] and ``svd_lowrank_l2`` [N, rank] (FLOAT);
the saver's label rule and the semantics are in docs/svd.md section 1."""
from __future__ import annotations

from .registry import register_scheme
from .svd_base import SVDScheme
from .w8a8_dynamic import W8A8Dynamic


@register_scheme()
class W8A8DynamicSVD(SVDScheme):
    name = "w8a8_dynamic_svd"
    label = "W8A8_SVD_DYNAMIC"
    residual_cls = W8A8Dynamic
