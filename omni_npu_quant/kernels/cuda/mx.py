"""CUDA MX kernels (MXFP8, MXFP4, W4A8 MXFP, dual-scale MXFP4): fused Triton MX quantizer
(bit-identical to ``numerics.mx``), weights resident in 4 / 8 bits, ``tl.dot_scaled`` block-scaled
GEMM (exact products, fp32 accumulation: E1); dual-scale accumulates each 512-chunk separately.

Opt-in (backend option ``mx_prefill="dequant"`` or ``OMNI_NPU_QUANT_CUDA_MX_PREFILL=dequant``):
for single-scale MX at M >= ``mx_prefill_m`` (1024) the activation is quantized-dequantized to
exact bf16 values and the weight decoded into a transient bf16 workspace, then cuBLAS runs the
GEMM with fp32 output (still E1; faster at prefill on SM90 but it decodes the weight every call).

Opt-in small-M path (backend option ``gemv=1`` or ``OMNI_NPU_QUANT_CUDA_GEMV=1``; decided per layer at
prepare): M <= 16 runs ``jit/gemv.py`` (int32-word FP4 loads, fp16-bit-pattern E2M1 decode, GEMV form for
M <= 4, split-K with a deterministic reduction; E1).  Off by default until the H200 probe
(``tools/decode_probe.py``) has measured it.

SM90 (H100/H200): tested; SM100: ``tl.dot_scaled`` lowers to the native MX MMA (untested); other
families are refused, so the exact reference kernel runs on the GPU instead."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ...numerics import mx as MX
from ...numerics.constants import DUAL_L0_BLOCK, E4M3, E8M0_PAD_CODE, MX_BLOCK
from ...schemes.base import effective_mul_scale
from ..base import NATIVE, PreparedLinear
from ..registry import register_kernel
from .common import CudaKernel, ceil_to, gemv_requested, jit_module

F32 = torch.float32
PREFILL_ENV = "OMNI_NPU_QUANT_CUDA_MX_PREFILL"
DECODE_ENV = "OMNI_NPU_QUANT_CUDA_DECODE"  # jit/decode.py's switch (read once per layer, at prepare)


@dataclass
class CudaMXPrepared(PreparedLinear):
    weight: torch.Tensor | None = None  # E4M3 bytes (N, Kp) or packed FP4 (N, Kp/2), zero padded
    weight_scale: torch.Tensor | None = None  # E8M0 codes (N, Kp/32), padding E8M0_PAD_CODE
    kp: int = 0  # K padded to the GEMM's K tile (256; 512 for dual-scale)
    l0w: torch.Tensor | None = None  # dual-scale: fp32 (N, K/512)
    smooth: torch.Tensor | None = None  # effective mul_scale: fp32 (single-scale) / act dtype (dual)
    gemv: bool = False  # M <= 16 through jit/gemv.py (chosen at prepare)
    decode: bool = False  # M <= 16 through jit/decode.py (its policy, read at prepare)
    q_args: tuple = ()  # (act_fmt, round mode, scale alg, kp): ops.mx_quant's arguments after (x2, smooth)


@register_kernel(20)
class CudaMX(CudaKernel):
    name = "cuda.mx"
    schemes = ("mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")
    families = ("sm90", "sm100")

    @classmethod
    def family_refusal(cls, family):
        if family == "sm120":
            return ("MX kernels not validated on SM120 (99 KB shared memory, no MXFP4 in torch._scaled_mm): exact "
                    "reference math on the GPU")
        return "MX kernels not validated on this family: exact reference math on the GPU"

    def mode(self, scheme):
        if self.target.device.family == "sm100":
            return NATIVE, ("native MX tensor cores (MXFP8/MXFP4 block-32 scaled MMA); dual-scale per 512-chunk + fp32 "
                            "combine (untested)")
        return NATIVE, ("Triton fused MX quantizer + tl.dot_scaled: no MX tensor cores on SM90, operands upcast exactly "
                        "to bf16 MMA (exact products, fp32 accumulation; dual-scale per 512-chunk); weights stay 4/8-bit")

    def __init__(self, target):
        super().__init__(target)
        self.mx_prefill_m = int(target.options.get("mx_prefill_m", 1024))
        self.mx_prefill = target.options.get("mx_prefill") or os.environ.get(PREFILL_ENV, "dot_scaled")
        if self.mx_prefill not in ("dequant", "dot_scaled"):
            raise ValueError(f"mx_prefill ({PREFILL_ENV}) must be 'dequant' or 'dot_scaled', got {self.mx_prefill!r}")
        # the opt-in dequant prefill path needs a CUDA device (decided once, not per call)
        self._prefill_dequant = self.mx_prefill == "dequant" and self.torch_device.type == "cuda"
        self._ws: dict = {}

    def prepare(self, scheme, tensors, act_dtype, n, k, where):
        dev = self.dev
        kp = ceil_to(k, DUAL_L0_BLOCK if scheme.dual_level else 256)
        w = tensors["weight"].to(dev)
        if scheme.weight_fmt is E4M3:
            wq = torch.zeros((n, kp), dtype=torch.uint8, device=dev)
            wq[:, :k] = w.view(torch.uint8) if w.dtype != torch.uint8 else w
        else:
            wq = torch.zeros((n, kp // 2), dtype=torch.uint8, device=dev)
            wq[:, :w.shape[1]] = w
        wsc = torch.full((n, kp // MX_BLOCK), E8M0_PAD_CODE, dtype=torch.uint8, device=dev)
        wsc[:, :MX.num_blocks(k, MX_BLOCK)] = tensors["weight_scale"].to(dev)
        ms = tensors.get("mul_scale")
        ms = None if ms is None else effective_mul_scale(ms, act_dtype).to(dev).contiguous()
        bias = tensors.get("bias")
        p = CudaMXPrepared(scheme, self, n, k, act_dtype, mode=NATIVE,
                           bias=None if bias is None else bias.to(dev, F32).contiguous(), weight=wq, weight_scale=wsc,
                           kp=kp)
        p.gemv = self._gemv_on()
        if p.gemv and self.torch_device.type == "cuda":
            jit_module("gemv").reserve(self.torch_device, n, kp, dual=bool(scheme.dual_level))
        if scheme.dual_level:
            p.l0w = scheme.weight_l0(tensors).to(dev).contiguous()
            p.smooth = None if ms is None else ms.to(act_dtype)
        else:
            p.smooth = ms
        p.q_args = (scheme.act_fmt, scheme.act_round_mode, scheme.act_scale_alg, kp)
        p.decode = self._decode_on(scheme.weight_fmt.bits == 4, n, kp)
        return p

    def _gemv_on(self) -> bool:
        return gemv_requested(self)

    @staticmethod
    def _decode_on(w_fp4: bool, n: int, kp: int) -> bool:
        """jit/decode.py's policy for this layer, with OMNI_NPU_QUANT_CUDA_DECODE as it is now (prepare time)."""
        env = os.environ.get(DECODE_ENV, "auto")
        if env == "0":
            return False  # no triton import at prepare
        return jit_module("decode").policy(env, w_fp4, n, kp)

    def quantize_activation(self, p, x2):
        return self._storage(p, self._quantize(p, x2))

    def _quantize(self, p, x2):
        """The fused quantizer's raw outputs: (q padded to kp, E8M0 codes (M, kp/32), level-0 or None)."""
        ops = jit_module("ops")
        s = p.scheme
        if s.dual_level:
            return ops.dual_quant(x2, p.smooth, s.act_round_mode)
        q, codes, _ = ops.mx_quant(x2, p.smooth, *p.q_args)
        return q, codes, None

    def _storage(self, p, raw):
        """Raw quantizer outputs -> the device op layout every backend reports (``activation_storage``)."""
        q, codes, l0 = raw
        k, nb = p.k, MX.num_blocks(p.k, MX_BLOCK)
        if l0 is not None:
            return {"x_q": q, "x_l0": l0, "x_scale": MX.to_scale_pairs(codes[:, :nb])}
        xq = q[:, :k].view(torch.float8_e4m3fn) if p.scheme.act_fmt is E4M3 else q[:, :-(-k // 2)]
        return {"x_q": xq, "x_scale": MX.to_scale_pairs(codes[:, :nb])}

    def _workspace(self, n, kp):
        buf = self._ws.get("bf16")
        if buf is None or buf.numel() < n * kp:
            buf = torch.empty(n * kp, dtype=torch.bfloat16, device=self.dev)
            self._ws["bf16"] = buf
        return buf[: n * kp].view(n, kp)

    def _apply(self, p, x2, add_bias=True):
        ops = jit_module("ops")  # imported once, not per call
        s = p.scheme
        out_dtype = p.act_dtype
        bias = p.bias if add_bias else None
        if self._prefill_dequant and not s.dual_level and x2.shape[0] >= self.mx_prefill_m:
            # opt-in prefill path: the quantizer writes exact dequantized bf16 values instead of codes
            _, _, xd = ops.mx_quant(x2, p.smooth, s.act_fmt, s.act_round_mode, s.act_scale_alg, p.kp,
                                    write_q=False, write_deq=True)
            wd = ops.mx_weight_dequant(p.weight, p.weight_scale, p.kp, s.weight_fmt, out=self._workspace(p.n, p.kp))
            if bias is None and out_dtype == torch.bfloat16:
                return torch.mm(xd, wd.t())
            out = torch.mm(xd, wd.t(), out_dtype=F32)
            return (out if bias is None else out + bias).to(out_dtype)
        q, codes, l0 = self._quantize(p, x2)  # the quantizer quantize_activation reports, before its layout change
        a_fmt = s.act_fmt
        if p.gemv and x2.shape[0] <= 16:
            gemv = jit_module("gemv")
            return gemv.mx_gemv(q, codes, p.weight, p.weight_scale, p.n, p.kp, out_dtype, a_fmt.bits == 4,
                                s.weight_fmt.bits == 4, bias=bias, l0x=l0, l0w=p.l0w)
        return ops.mx_gemm(q, codes, p.weight, p.weight_scale, p.n, p.kp, out_dtype, a_fmt, s.weight_fmt, bias=bias,
                           l0x=l0, l0w=p.l0w, decode=p.decode)
