"""nunchaku's own SVDQuant W4A4 kernels as an optional CUDA kernel entry for ``svdq_int4`` / ``svdq_nvfp4``.

UNTESTED ON A GPU: nunchaku is not installable on the development machine.  What is tested (CPU,
tests/svd/test_svdq_nunchaku.py): the refusals, the layout conversion (canonical -> nunchaku -> our reader is bit
for bit the identity, and equals an independent index-formula packer), and, against a fake ``nunchaku`` module, that
``apply`` hands nunchaku's ops exactly the operands below (the fake decodes them with our reader and reproduces the
reference backend's output bit for bit).

The calls are the ones nunchaku's ``SVDQW4A4Linear.forward`` makes (nunchaku-tech/nunchaku ``nunchaku/models/
linear.py``, ``nunchaku/ops/quantize.py``, ``nunchaku/ops/gemm.py``, read at commit 3a3cc3d):

1. ``svdq_quantize_w4a4_act_fuse_lora_cuda(x, lora_down=proj_down, smooth=smooth_factor, fp4=..., pad_size=256)``
   -> packed activations (M_pad, K/2) uint8, activation scales (K/G, M_pad) (INT4: the activation dtype; NVFP4:
   float8_e4m3fn), ``lora_act`` (M_pad, rank) fp32 = raw ``x . proj_down`` (the branch sees x unsmoothed).
2. ``svdq_gemm_w4a4_cuda(act, wgt=qweight, out=(M, N) 16-bit, ascales, wscales, lora_act_in=lora_act,
   lora_up=proj_up, bias, fp4, alpha=wtscale, wcscales, act_unsigned=False)``, ``lora_scales`` left to its default
   (1.0 per 16 ranks).

Layouts (``numerics.nunchaku_layout.to_nunchaku_layout``, the inverse of our checkpoint reader): ``qweight`` int8
[N, K/2] in nunchaku's 128 x 64 MMA tile order; ``wscales`` [K/G, N] (INT4 ``pack_scale``, in the activation dtype:
nunchaku's INT4 GEMM takes the dtype from ``ascales`` and reads ``wscales`` as it; NVFP4 ``pack_micro_scale``,
float8_e4m3fn); ``smooth_factor``, ``bias``, ``wcscales`` "packed ws" [N]/[K] vectors in the activation dtype (the
NVFP4 GEMM asserts ``out``, ``bias``, ``lora_up``, ``wcscales`` share one 16-bit dtype); ``proj_down`` [K, r] and
``proj_up`` [N, r] in ``pack_lowrank_weight`` order; ``alpha`` a Python float.

Where it runs: nunchaku builds for SM75/80/86/89/120a/121a (its ``setup.py`` ``get_sm_targets``), not SM90 or SM100:
there ``cuda.svd`` runs these layers.  NVFP4 needs the FP4 MMA (``FP4_AVAILABLE`` = ``__CUDA_ARCH__ >= 1200`` in
``src/kernels/zgemm/gemm_w4a4.cuh``): SM120 only.  Shape rules of its packing: N % 128 == 0, K % 128 == 0,
rank % 16 == 0; 16-bit activations only.  Numerics differ from our reference by rounding (docs/svd.md section 1:
16-bit ``fpsum`` group partials for INT4, the residual rounded to 16 bit before the branch is added, the bias
added in 16 bit).  ``act_unsigned`` layers are not produced by our reader, so it is always False.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...numerics.nunchaku_layout import LOWRANK_PACK, TILE_K, WARP_N, NunchakuLayoutError, to_nunchaku_layout
from ..base import NATIVE, KernelRefusal, PreparedLinear
from ..registry import register_kernel
from .common import CudaKernel

F32 = torch.float32
HALVES = (torch.bfloat16, torch.float16)
PAD_M = 256  # SVDQW4A4Linear.quantize's default pad_size
NUNCHAKU_TARGETS = "SM75/80/86/89/120a/121a"
VERIFIED = ("untested on a GPU (nunchaku is not installable on the development machine); layout conversion and the "
            "operands passed to nunchaku's ops checked on CPU against a fake nunchaku module "
            "(tests/svd/test_svdq_nunchaku.py)")


def nunchaku_ops():
    """nunchaku's (quantize, gemm) Python wrappers; raises ImportError (or whatever its import raises)."""
    from nunchaku.ops.gemm import svdq_gemm_w4a4_cuda
    from nunchaku.ops.quantize import svdq_quantize_w4a4_act_fuse_lora_cuda

    return svdq_quantize_w4a4_act_fuse_lora_cuda, svdq_gemm_w4a4_cuda


def nunchaku_problem() -> str | None:
    """Why nunchaku's ops cannot be imported here, or None."""
    try:
        nunchaku_ops()
    except Exception as e:  # noqa: BLE001 - a missing or broken install (its compiled _C) both mean "not usable"
        return (f"nunchaku is not importable ({type(e).__name__}: {e}); install a nunchaku wheel built for this torch "
                f"and CUDA to use its kernels (cuda.svd runs these layers meanwhile)")
    return None


@dataclass
class NunchakuPrepared(PreparedLinear):
    qweight: torch.Tensor | None = None  # int8 [N, K/2], nunchaku tile order
    wscales: torch.Tensor | None = None  # [K/G, N]: INT4 act dtype, NVFP4 float8_e4m3fn
    wcscales: torch.Tensor | None = None  # NVFP4 [N] act dtype (packed ws), or None
    smooth: torch.Tensor | None = None  # [K] act dtype (packed ws); ones when the layer has none
    proj_down: torch.Tensor | None = None  # [K, r] act dtype
    proj_up: torch.Tensor | None = None  # [N, r] act dtype
    bias16: torch.Tensor | None = None  # [N] act dtype (packed ws), or None
    alpha: float = 1.0  # NVFP4 wtscale
    fp4: bool = False
    rank: int = 0


@register_kernel(45)
class CudaSVDQNunchaku(CudaKernel):
    name = "cuda.svdq_nunchaku"
    schemes = ("svdq_int4", "svdq_nvfp4")
    families = ("sm80", "sm89", "sm120")  # "sm80" covers SM80 / SM86 / SM87
    summary = ("nunchaku's own fused kernels: quantize_w4a4_act_fuse_lora (x / smooth_factor to INT4 g64 / NVFP4 g16, "
               "raw x . proj_down in fp32) + gemm_w4a4 (4-bit GEMM, epilogue alpha, wcscales, bias, then the "
               "low-rank up-projection)")

    @classmethod
    def family_refusal(cls, family):
        return (f"nunchaku builds its kernels for {NUNCHAKU_TARGETS} only (setup.py get_sm_targets), not {family}: "
                f"cuda.svd runs these layers")

    @classmethod
    def is_supported(cls, device):
        if device.family is None:
            return False, device.detail or "no CUDA device (or a GPU older than SM80)"
        if device.family not in cls.families:
            return False, cls.family_refusal(device.family)
        why = nunchaku_problem()
        return (False, why) if why else (True, "")

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if not ok:
            return ok, why
        if scheme.name == "svdq_nvfp4" and self.target.device.family != "sm120":
            return False, (f"NVFP4 needs the FP4 MMA (nunchaku: __CUDA_ARCH__ >= 1200, SM120 / SM121), not "
                           f"{self.target.device.family}")
        if act_dtype is not None and act_dtype not in HALVES:
            return False, f"nunchaku's kernels take bf16 / fp16 activations, not {act_dtype}"
        if n is not None and k is not None and (n % WARP_N or k % (2 * TILE_K)):
            return False, f"nunchaku's packing needs N % {WARP_N} == 0 and K % {2 * TILE_K} == 0, got N={n}, K={k}"
        return True, ""

    def verified_for(self, device) -> str:
        return VERIFIED

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        rank = int(tensors["svd_lowrank_l1"].shape[0])
        if rank % LOWRANK_PACK:
            raise KernelRefusal(f"rank {rank}: nunchaku's low-rank kernels need rank % {LOWRANK_PACK} == 0")
        notes = []
        t = dict(tensors)
        fp4 = scheme.name == "svdq_nvfp4"
        # 16-bit operands in the activation dtype (nunchaku reads them as it); note any value that changes
        for name in ("smooth_factor", "bias", "wcscales", "svd_lowrank_l1", "svd_lowrank_l2") + \
                (() if fp4 else ("weight_scale",)):
            v = t.get(name)
            if v is None:
                continue
            c = v.to(act_dtype)
            if not bool((c.to(F32) == v.to(F32)).all()):
                notes.append(f"{where}: '{name}' ({v.dtype}) is not representable in {act_dtype}: rounded to it")
            t[name] = c
        if t.get("smooth_factor") is None:
            t["smooth_factor"] = torch.ones(k, dtype=act_dtype)
        try:
            lay = to_nunchaku_layout(scheme.name, {s: v.cpu() for s, v in t.items()})
        except NunchakuLayoutError as e:
            raise KernelRefusal(f"{where}: {e}") from None
        dev = self.dev
        lay = {s: v.to(dev) for s, v in lay.items()}
        bias = lay.get("bias")
        return NunchakuPrepared(scheme, self, n, k, act_dtype, bias=None if bias is None else bias.to(F32),
                                mode=NATIVE, notes=notes, qweight=lay["qweight"], wscales=lay["wscales"],
                                wcscales=lay.get("wcscales"), smooth=lay["smooth_factor"], proj_down=lay["proj_down"],
                                proj_up=lay["proj_up"], bias16=bias,
                                alpha=float(lay["wtscale"]) if fp4 else 1.0, fp4=fp4, rank=rank)

    def quantize_activation(self, p, x2):
        """nunchaku's fused quantizer, raw: packed activations and scales in its own layout (M padded to 256), and the
        fp32 down-projection ``x . proj_down`` (not byte-comparable with the reference's canonical layout)."""
        quantize, _ = nunchaku_ops()
        qx, ascales, lora_act = quantize(x2.contiguous(), lora_down=p.proj_down, smooth=p.smooth, fp4=p.fp4,
                                         pad_size=PAD_M)
        return {"qact": qx, "ascales": ascales, "lora_act": lora_act}

    def _apply(self, p, x2, add_bias=True):
        _, gemm = nunchaku_ops()
        m = x2.shape[0]
        out = torch.empty((m, p.n), dtype=p.act_dtype, device=x2.device)
        if m == 0:
            return out
        st = self.quantize_activation(p, x2)
        gemm(act=st["qact"], wgt=p.qweight, out=out, ascales=st["ascales"], wscales=p.wscales,
             lora_act_in=st["lora_act"], lora_up=p.proj_up, bias=p.bias16 if add_bias else None, fp4=p.fp4,
             alpha=p.alpha, wcscales=p.wcscales, act_unsigned=False)
        return out
