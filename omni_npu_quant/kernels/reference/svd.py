"""SVD low-rank kernels: the residual runs on the kernel the device would pick for the residual scheme, the
16-bit low-rank branch is added (docs/svd.md).  ``SVDKernel`` holds what every device's SVD kernel shares
(residual selection with reasons, prepare, the composed apply); ``ReferenceSVD`` is the exact CPU twin:
residual through the reference kernels (fp32 output), branch ``round_act(x . L1^T) . L2^T`` fp32-accumulated
and added in fp32 to the residual output, bias included (``schemes.svd_base.lowrank_branch``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...schemes.registry import SCHEMES
from ...schemes.svd_base import L1, L2, SVDScheme, lowrank_branch
from ..base import NATIVE, KernelRefusal, LinearKernel, PreparedLinear
from ..registry import candidate_classes, register_kernel
from .common import ReferenceKernel

F32 = torch.float32
# every registered SVD scheme (schemes/*_svd.py, schemes/svdq.py): a new one needs no edit here
SVD_SCHEMES = tuple(name for name, cls in SCHEMES.items() if issubclass(cls, SVDScheme))


@dataclass
class SVDPrepared(PreparedLinear):
    residual: PreparedLinear | None = None  # the residual kernel's own prepared form
    l1: torch.Tensor | None = None  # [rank, K] in the activation dtype
    l2: torch.Tensor | None = None  # [N, rank] in the activation dtype
    rank: int = 0


class SVDKernel(LinearKernel):
    """Mixin of the SVD kernels.  ``residual_kind``: whose kernels may run the residual."""

    schemes = SVD_SCHEMES
    residual_kind: str = "cpu"
    branch_how: str = ("low-rank branch: x.L1^T fp32-accumulated, rounded to the activation dtype, .L2^T "
                       "fp32-accumulated, added in fp32")

    def _residual_candidates(self):
        return [c for c in candidate_classes(self.residual_kind) if not issubclass(c, SVDKernel)]

    def residual_kernels(self, scheme, n=None, k=None, act_dtype=None):
        """[(kernel, None)] accepting the residual, in order, then [(None, (name, why))] refusals."""
        out, refusals = [], []
        res = scheme.residual
        for cls in self._residual_candidates():
            ok, why = cls.is_supported(self.target.device)
            kern = None
            if ok:
                kern = cls(self.target)
                ok, why = kern.can_implement(res, n, k, act_dtype)
            if ok:
                out.append(kern)
            elif res.name in cls.schemes:
                refusals.append((cls.name, why))
        return out, refusals

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if not ok:
            return ok, why
        if not isinstance(scheme, SVDScheme):
            return False, f"{self.name} runs SVD low-rank schemes only"
        kerns, refusals = self.residual_kernels(scheme, n, k, act_dtype)
        if not kerns:
            why = "; ".join(f"{a}: {b}" for a, b in refusals) or f"no {self.residual_kind} kernel implements it"
            return False, f"no kernel for the residual {scheme.residual.name}: {why}"
        return True, ""

    def mode(self, scheme):
        kerns, _ = self.residual_kernels(scheme)
        if not kerns:
            return NATIVE, self.summary
        mode, how = kerns[0].mode(scheme.residual)
        return mode, f"residual {scheme.residual.name} on {kerns[0].name} ({how}); {self.branch_how}"

    def residual_verified(self, scheme) -> str:
        kerns, _ = self.residual_kernels(scheme)
        return kerns[0].verified if kerns else self.verified

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        res_t, l1, l2 = scheme.split(tensors)
        kerns, refusals = self.residual_kernels(scheme, n, k, act_dtype)
        rp = None
        for kern in kerns:
            try:
                rp = kern.prepare(scheme.residual, res_t, act_dtype, n, k, where)
                break
            except KernelRefusal as e:
                refusals.append((kern.name, str(e)))
        if rp is None:
            raise KernelRefusal(f"no kernel takes the residual {scheme.residual.name}: "
                                + "; ".join(f"{a}: {b}" for a, b in refusals))
        p = SVDPrepared(scheme, self, n, k, act_dtype, bias=rp.bias, mul_scale=rp.mul_scale, mode=rp.mode,
                        notes=list(rp.notes), residual=rp, rank=int(l1.shape[0]),
                        l1=self.branch_weight(l1, act_dtype), l2=self.branch_weight(l2, act_dtype))
        for what, t in ((L1, l1), (L2, l2)):
            if not bool((t.to(act_dtype).to(F32) == t.to(F32)).all()):
                p.notes.append(f"{where}: '{what}' ({t.dtype}) is not representable in {act_dtype}: rounded to it")
        return p

    def branch_weight(self, t: torch.Tensor, act_dtype: torch.dtype) -> torch.Tensor:
        return t.to(self.dev, act_dtype).contiguous()

    def quantize_activation(self, p, x2):
        return p.residual.kernel.quantize_activation(p.residual, x2)

    def branch(self, p, x2) -> torch.Tensor:
        """fp32 (M, N) low-rank output."""
        return lowrank_branch(x2, p.l1, p.l2, p.act_dtype)

    def apply(self, p, x2, add_bias=True):
        rp = p.residual  # the residual kernel adds the bias its own way (some fold it into quant_bias)
        return rp.kernel.apply(rp, x2, add_bias=add_bias).to(F32) + self.branch(p, x2)


@register_kernel(950)
class ReferenceSVD(SVDKernel, ReferenceKernel):
    name = "reference.svd"
    residual_kind = "cpu"
    summary = "exact PyTorch reference: residual on its reference kernel (fp32), fp32 low-rank branch"

    def mode(self, scheme):
        mode, how = SVDKernel.mode(self, scheme)
        return ReferenceKernel.mode(self, scheme)[0], how
