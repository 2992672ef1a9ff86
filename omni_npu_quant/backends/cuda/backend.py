"""``CudaBackend``: the NPU semantics of every scheme on NVIDIA GPUs (SM90 first).

* W8A8 dynamic / static: fused Triton per-token (or static) int8 quantizer, Triton int8 GEMM with
  exact int32 accumulation and the NPU epilogue fused (exactness E0).
* MXFP8 / MXFP4 / W4A8 / dual-scale MXFP4: fused Triton MX quantizer (bit-identical to
  ``numerics.mx``), weights resident in 8 / 4 bits, ``tl.dot_scaled`` block-scaled GEMM (exact
  products, fp32 accumulation: E1); dual-scale accumulates each 512-chunk separately.  Opt-in
  (``OMNI_NPU_QUANT_CUDA_MX_PREFILL=dequant``): for single-scale MX at M >= ``mx_prefill_m``
  (1024) the activation is quantized-dequantized to exact bf16 values and the weight decoded into
  a transient bf16 workspace, then cuBLAS runs the GEMM with fp32 output (still E1, 2-3x faster
  at prefill on SM90, but it dequantizes the weight on every call, which the default avoids).
* Anything else (W8A16, per-group int8 with odd groups, no Triton, unsupported GPU family): the
  exact reference math on the GPU (logged), never silently.

Capability families: SM90 (H100/H200) tested; SM100 (B200/B300: ``tl.dot_scaled`` lowers to the
native MX MMA) and SM80/89 int8 are expected to work but were never run here (docs/cuda.md).
"""
from __future__ import annotations

import logging
import os

import torch

from ...numerics import mx as MX
from ...numerics.constants import E2M1, E4M3, MX_BLOCK
from ...schemes.base import Scheme, effective_mul_scale
from ...schemes.int8 import W8A16, W8A8Dynamic, W8A8Static, effective_deq_scale
from ...schemes.mx import MXFP4Dual, _MXBase
from ..base import FALLBACK, NATIVE, UNSUPPORTED, Capability, LinearBackend, PreparedLinear

log = logging.getLogger(__name__)
F32 = torch.float32


def cuda_capability_family(device=None) -> tuple[int, int] | None:
    """(major, minor) of the CUDA device, or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


class CudaBackend(LinearBackend):
    name = "cuda"

    def __init__(self, device: str | torch.device | None = None, *, mx_prefill_m: int = 1024,
                 mx_prefill: str | None = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.mx_prefill_m = mx_prefill_m
        self.mx_prefill = mx_prefill or os.environ.get("OMNI_NPU_QUANT_CUDA_MX_PREFILL", "dot_scaled")
        if self.mx_prefill not in ("dequant", "dot_scaled"):
            raise ValueError(f"mx_prefill must be 'dequant' or 'dot_scaled', got {self.mx_prefill!r}")
        self._warned: set = set()
        self._ws: dict = {}

    # ------------------------------------------------------------------------------------
    def _cc(self):
        if self.device.type != "cuda":
            return None
        return cuda_capability_family(self.device)

    def capability(self, scheme: Scheme) -> Capability:
        cc = self._cc()
        kernels_ok = _triton_available() and (cc is not None or (_interpret() and self.device.type == "cpu"))
        if cc is None and not (_interpret() and self.device.type == "cpu"):
            return Capability(UNSUPPORTED, "no CUDA device")
        if not kernels_ok:
            return Capability(FALLBACK, "triton is not importable: exact reference math on the GPU")
        major = cc[0] if cc is not None else 9  # interpreter: behaves as the SM90 path
        if isinstance(scheme, (W8A8Dynamic, W8A8Static)):
            if major < 8:
                return Capability(FALLBACK, f"sm_{cc[0]}{cc[1]}: no Triton int8 MMA path; reference math")
            note = "" if major == 9 else " (untested on this family)"
            return Capability(NATIVE, "Triton fused int8 quantizer + int8 tl.dot (int32) + fused NPU epilogue" + note)
        if isinstance(scheme, W8A16):
            return Capability(FALLBACK, "W8A16 runs the exact reference math (no dedicated kernel)")
        if isinstance(scheme, _MXBase):
            if major == 9:
                return Capability(NATIVE, "Triton fused MX quantizer + tl.dot_scaled (bf16-emulated MMA on SM90, exact "
                                          "products, fp32 accumulation)")
            if major == 10:
                return Capability(NATIVE, "Triton fused MX quantizer + tl.dot_scaled (native MX MMA on SM100; untested)")
            return Capability(FALLBACK, f"sm_{cc[0]}{cc[1]}: MX kernels not validated on this family; reference math")
        return Capability(UNSUPPORTED, f"unknown scheme {type(scheme).__name__}")

    def _fallback(self, scheme, tensors, act_dtype, k, where, reason) -> PreparedLinear:
        from ..reference import ReferenceBackend

        key = (type(scheme).__name__, reason)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("cuda backend: %s%s falls back to the exact reference math: %s",
                        f"{where}: " if where else "", scheme.name, reason)
        ref = ReferenceBackend()
        dev_tensors = {n: t.to(self.device) for n, t in tensors.items()}
        p = ref.prepare(scheme, dev_tensors, act_dtype, k=k, where=where)
        p.backend = self.name
        p.mode = FALLBACK
        p.notes.append(reason)
        p.tensors["_ref"] = ref
        return p

    # ------------------------------------------------------------------------------------
    def prepare(self, scheme, tensors, act_dtype, *, k=None, where=""):
        cap = self.capability(scheme)
        if cap.mode == UNSUPPORTED:
            raise RuntimeError(f"{where + ': ' if where else ''}cuda backend cannot run {scheme.name}: {cap.reason}")
        if cap.mode == FALLBACK:
            return self._fallback(scheme, tensors, act_dtype, k, where, cap.reason)
        n, k = scheme.validate(tensors, k=k, where=where)
        dev = self.device
        t: dict = {}
        ms = tensors.get("mul_scale")
        ms = None if ms is None else effective_mul_scale(ms, act_dtype).to(dev).contiguous()
        bias = tensors.get("bias")
        t["bias"] = None if bias is None else bias.to(dev, F32).contiguous()
        if isinstance(scheme, W8A8Dynamic):
            ws = tensors["weight_scale"].to(dev, F32).reshape(n, -1).contiguous()
            gk = k // ws.shape[1]
            if ws.shape[1] > 1 and gk % 32:
                return self._fallback(scheme, tensors, act_dtype, k, where, f"per-group size {gk} is not a multiple of 32")
            t.update(weight=tensors["weight"].to(dev).contiguous(), weight_scale=ws, group_k=gk, smooth=ms)
        elif isinstance(scheme, W8A8Static):
            recip = 1.0 / tensors["input_scale"].to(F32).reshape(-1)[:1]
            t.update(weight=tensors["weight"].to(dev).contiguous(), smooth=ms,
                     act_scale=recip.to(act_dtype).to(dev),
                     act_offset=tensors["input_offset"].to(F32).reshape(-1)[:1].to(act_dtype).to(dev),
                     quant_bias=tensors["quant_bias"].to(dev, torch.int32).contiguous(),
                     deq=effective_deq_scale(tensors["deq_scale"], act_dtype).to(dev).contiguous())
            t["bias"] = None
        else:  # MX family
            kp = _ceil_to(k, 512 if isinstance(scheme, MXFP4Dual) else 256)
            w = tensors["weight"].to(dev)
            if scheme.weight_fmt is E4M3:
                wb = w.view(torch.uint8) if w.dtype != torch.uint8 else w
                wq = torch.zeros((n, kp), dtype=torch.uint8, device=dev)
                wq[:, :k] = wb
            else:
                wq = torch.zeros((n, kp // 2), dtype=torch.uint8, device=dev)
                wq[:, :w.shape[1]] = w
                if k % 2:  # the stored pad nibble must be zero (it is by construction; enforce)
                    wq[:, w.shape[1] - 1] &= 0x0F
            nb = MX.num_blocks(k, MX_BLOCK)
            wsc = torch.full((n, kp // MX_BLOCK), 127, dtype=torch.uint8, device=dev)
            wsc[:, :nb] = tensors["weight_scale"].to(dev)
            t.update(weight=wq, weight_scale=wsc, kp=kp)
            if isinstance(scheme, MXFP4Dual):
                t["l0w"] = scheme.weight_l0(tensors).to(dev).contiguous()
                t["smooth"] = None if ms is None else ms.to(act_dtype)
            else:
                t["smooth"] = ms
        return PreparedLinear(scheme, self.name, n, k, act_dtype, t, mode=cap.mode, notes=[cap.reason])

    # ------------------------------------------------------------------------------------
    def quantize_activation(self, p: PreparedLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if p.mode == FALLBACK:
            return p.tensors["_ref"].quantize_activation(p, x.to(self.device))
        from . import ops

        s, t = p.scheme, p.tensors
        lead = x.shape[:-1]
        x2 = x.to(self.device, p.act_dtype).reshape(-1, x.shape[-1]).contiguous()
        if isinstance(s, W8A8Dynamic):
            q, sc = ops.int8_dynamic_quant(x2, t["smooth"])
            return {"x_q": q.reshape(*lead, -1), "x_scale": sc.reshape(lead)}
        if isinstance(s, W8A8Static):
            q = ops.int8_static_quant(x2, t["smooth"], t["act_scale"], t["act_offset"])
            return {"x_q": q.reshape(*lead, -1)}
        k = p.k
        nb = MX.num_blocks(k, MX_BLOCK)
        if isinstance(s, MXFP4Dual):
            q, codes, l0 = ops.dual_quant(x2, t["smooth"], s.act_round_mode)
            return {"x_q": q.reshape(*lead, -1), "x_l0": l0.reshape(*lead, -1),
                    "x_scale": MX.to_scale_pairs(codes[:, :nb]).reshape(*lead, -1, 2)}
        q, codes, _ = ops.mx_quant(x2, t["smooth"], s.act_fmt, s.act_round_mode, s.act_scale_alg, t["kp"])
        if s.act_fmt is E4M3:
            xq = q[:, :k].view(torch.float8_e4m3fn)
        else:
            xq = q[:, :-(-k // 2)]
        return {"x_q": xq.reshape(*lead, -1), "x_scale": MX.to_scale_pairs(codes[:, :nb]).reshape(*lead, -1, 2)}

    # ------------------------------------------------------------------------------------
    def _workspace(self, n, kp):
        buf = self._ws.get("bf16")
        if buf is None or buf.numel() < n * kp:
            buf = torch.empty(n * kp, dtype=torch.bfloat16, device=self.device)
            self._ws["bf16"] = buf
        return buf[: n * kp].view(n, kp)

    def apply(self, p: PreparedLinear, x: torch.Tensor, *, add_bias: bool = True) -> torch.Tensor:
        if p.mode == FALLBACK:
            return p.tensors["_ref"].apply(p, x.to(self.device), add_bias=add_bias)
        from . import ops

        s, t = p.scheme, p.tensors
        out_dtype = x.dtype
        lead = x.shape[:-1]
        x2 = x.to(self.device).reshape(-1, x.shape[-1]).to(p.act_dtype).contiguous()
        m = x2.shape[0]
        bias = t["bias"] if add_bias else None
        if isinstance(s, W8A8Dynamic):
            q, sx = ops.int8_dynamic_quant(x2, t["smooth"])
            out = ops.int8_gemm(q, t["weight"], out_dtype, sx=sx, ws=t["weight_scale"], bias=bias,
                                group_k=t["group_k"])
        elif isinstance(s, W8A8Static):
            q = ops.int8_static_quant(x2, t["smooth"], t["act_scale"], t["act_offset"])
            out = ops.int8_gemm(q, t["weight"], out_dtype, quant_bias=t["quant_bias"] if add_bias else None,
                                deq=t["deq"], static=True)
        elif isinstance(s, MXFP4Dual):
            q, codes, l0 = ops.dual_quant(x2, t["smooth"], s.act_round_mode)
            out = ops.mx_gemm(q, codes, t["weight"], t["weight_scale"], p.n, t["kp"], out_dtype, E2M1, E2M1,
                              bias=bias, l0x=l0, l0w=t["l0w"])
        else:
            kp = t["kp"]
            if m >= self.mx_prefill_m and self.mx_prefill == "dequant" and self.device.type == "cuda":
                _, _, xd = ops.mx_quant(x2, t["smooth"], s.act_fmt, s.act_round_mode, s.act_scale_alg, kp,
                                        write_q=False, write_deq=True)
                wd = ops.mx_weight_dequant(t["weight"], t["weight_scale"], kp, s.weight_fmt, out=self._workspace(p.n, kp))
                if bias is None and out_dtype == torch.bfloat16:
                    out = torch.mm(xd, wd.t())
                else:
                    out = torch.mm(xd, wd.t(), out_dtype=F32)
                    if bias is not None:
                        out = out + bias
                    out = out.to(out_dtype)
            else:
                q, codes, _ = ops.mx_quant(x2, t["smooth"], s.act_fmt, s.act_round_mode, s.act_scale_alg, kp)
                out = ops.mx_gemm(q, codes, t["weight"], t["weight_scale"], p.n, kp, out_dtype, s.act_fmt,
                                  s.weight_fmt, bias=bias)
        return out.reshape(*lead, p.n)
