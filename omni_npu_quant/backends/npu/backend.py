"""Ascend NPU backend: one-time ``prepare`` into the op layouts, ``apply`` through documented torch_npu ops.

``torch_npu`` is resolved lazily at ``prepare``/``apply`` time, never at import: either the real
package (``NpuBackend()``) or the CPU emulator of one SoC (``NpuBackend(soc="A2", sim=True)``, registry
name ``"npu-sim:A2"``).  Op sequences (npu_ops.md sections 3-4):

* A2/A3/A5 int8: W8A8 dynamic = ``npu_dynamic_quant`` + per-token ``npu_quant_matmul`` (int8 weight
  (K, N) in FRACTAL_NZ); W8A8 static = ``npu_quantize(x, act(1/input_scale), act(input_offset))`` +
  ``npu_quant_matmul(deq_scale, bias=quant_bias)`` (fp32 deq_scale for bf16, int64 via
  ``npu_trans_quant_param`` for fp16); W8A16 = ``npu_weight_quant_batchmatmul`` with the offset negated.
* A5 MX: ``npu_dynamic_mx_quant`` + MX ``npu_quant_matmul``; dual-scale:
  ``npu_dynamic_dual_level_mx_quant(smooth_scale=mul_scale)`` + ``npu_dual_level_quant_matmul``.
* A2/A3 MX ("exact fallback", logged once): FP4 weights become int8 (2 x value, in [-12, 12]) with
  a power-of-two group scale 2^(e-1) -> ``npu_weight_quant_batchmatmul(antiquant_group_size=32)``
  (exact); MXFP8 weights are decoded once to the activation dtype (exact; fp32 where not
  representable); dual-scale folds level 0 into the group scale (rounded to the activation dtype:
  not bit-exact).  ``act_fake_quant=True`` quantize-dequantizes activations with the scheme's
  activation rule first, so A2 outputs follow A5's W4A4/W8A8 semantics.
"""
from __future__ import annotations

import logging

import torch

from ... import platform as P
from ...numerics import mx as MX
from ...numerics.bits import pow2
from ...numerics.constants import ACL_FORMAT_FRACTAL_NZ, DUAL_L0_BLOCK, E2M1, E4M3, MX_BLOCK
from ...numerics.e8m0 import code_to_exponent
from ...numerics.gemm import mx_matmul
from ...numerics.mx_dual import DualResult, dual_level_dequantize
from ...schemes.base import Scheme, apply_mul_scale, effective_mul_scale
from ...schemes.int8 import W8A16, W8A8Dynamic, W8A8Static, deq_scale_fp32
from ...schemes.mx import MXFP4, MXFP4Dual, W4A8MXFP, _MXBase
from ..base import FALLBACK, UNSUPPORTED, Capability, LinearBackend, PreparedLinear

__all__ = ["NpuBackend", "NpuPrepareError"]

log = logging.getLogger("omni_npu_quant.backends.npu")
F32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
MAX_LAST_DIM = 65535
_LOGGED: set = set()


class NpuPrepareError(ValueError):
    """A layer the NPU ops cannot take (shape / dtype guard); the message names the layer."""


def _log_once(key, msg, *args):
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(msg, *args)


def _exact_in(t32: torch.Tensor, dtype: torch.dtype) -> bool:
    return bool((t32.to(dtype).to(F32) == t32).all())


class NpuBackend(LinearBackend):
    name = "npu"

    def __init__(self, soc: str | None = None, sim: bool = False, *, act_fake_quant: bool = False):
        if sim and not soc:
            raise ValueError("the emulated NPU backend needs a SoC: NpuBackend(soc='A2', sim=True)")
        self.sim = sim
        self._soc = soc.upper() if soc else None
        self.act_fake_quant = act_fake_quant
        if sim:
            self.name = f"npu-sim:{self._soc}"

    # ---- device ---------------------------------------------------------------------
    @property
    def soc(self) -> str | None:
        if self._soc is None:
            dev = P.detect_device()
            if dev.kind == "npu":
                self._soc = dev.family
        return self._soc

    @property
    def device(self) -> str:
        return "cpu" if self.sim else "npu"

    def ops(self):
        """The torch_npu module (real or emulated), resolved lazily."""
        if self.sim:
            from ...npu_sim import make_module

            return make_module(self._soc)
        try:
            import torch_npu  # noqa: F401
        except ImportError as e:
            raise RuntimeError("the NPU backend needs torch_npu (Ascend PyTorch adapter); on a machine without an "
                               "Ascend NPU use backend 'npu-sim:A2' / 'npu-sim:A5' or 'reference'") from e
        return torch_npu

    # ---- capability -----------------------------------------------------------------
    def capability(self, scheme) -> Capability:
        soc = self.soc
        if soc is None:
            return Capability(UNSUPPORTED, "no Ascend NPU detected (torch_npu missing, no device, or unknown SoC); "
                                           "use 'npu-sim:A2' / 'npu-sim:A5' to emulate one")
        row = P.capability_row(scheme, soc)
        if row.backend != "npu":
            return Capability(UNSUPPORTED, row.reason)
        return Capability(row.mode, row.reason)

    # ---- prepare --------------------------------------------------------------------
    def prepare(self, scheme: Scheme, tensors, act_dtype, *, k=None, where=""):
        loc = where or scheme.name
        cap = self.capability(scheme)
        if not cap.ok:
            raise NpuPrepareError(f"{loc}: backend '{self.name}' cannot run scheme {scheme.name}: {cap.reason}")
        n, k = scheme.validate(tensors, k=k, where=where)
        if act_dtype not in (BF16, FP16):
            raise NpuPrepareError(f"{loc}: NPU quantized kernels take bfloat16/float16 activations, got {act_dtype}")
        for what, v in (("K (in_features)", k), ("N (out_features)", n)):
            if v > MAX_LAST_DIM:
                raise NpuPrepareError(f"{loc}: {what} = {v} exceeds the {MAX_LAST_DIM} last-dim limit of the NPU "
                                      f"quant matmuls; split the layer (tensor parallelism) or use backend 'reference'")
        npu = self.ops()
        dev = self.device
        t: dict = {}
        notes: list[str] = []
        mode = cap.mode
        ms = tensors.get("mul_scale")
        t["mul_scale"] = None if ms is None else effective_mul_scale(ms, act_dtype).to(dev)
        bias = tensors.get("bias")
        bias32 = None if bias is None else bias.to(dev, F32)

        def nz(w_kn):
            return npu.npu_format_cast(w_kn.contiguous(), ACL_FORMAT_FRACTAL_NZ)

        if isinstance(scheme, W8A8Dynamic):
            w = tensors["weight"].to(dev)
            ws = tensors["weight_scale"].to(dev, F32)
            groups = ws.shape[-1] if ws.dim() == 2 else 1
            if groups == 1:
                t["weight"] = nz(w.t())
                t["weight_scale"] = ws.reshape(-1)
            else:
                gs = k // groups
                t["weights"] = [nz(w[:, g * gs:(g + 1) * gs].t()) for g in range(groups)]
                t["weight_scale"] = ws
                t["group_size"] = gs
                mode = FALLBACK
                notes.append(f"per-group int8 weight scale (group {gs}): npu_quant_matmul has no int8 per-group "
                             f"mode; int32 output per group, scales applied in fp32 (exact)")
            if ms is not None:
                t["smooth"] = ms.to(dev, act_dtype)  # aclnnDynamicQuant: smoothScales dtype == x dtype
                if not _exact_in(ms.float(), act_dtype):
                    notes.append(f"mul_scale is not representable in {act_dtype}: npu_dynamic_quant takes it rounded")
            else:
                t["smooth"] = None
            t["bias"] = bias32
        elif isinstance(scheme, W8A8Static):
            t["weight"] = nz(tensors["weight"].to(dev).t())
            t["act_scale"] = (1.0 / tensors["input_scale"].to(dev, F32).reshape(-1)[:1]).to(act_dtype)
            t["act_offset"] = tensors["input_offset"].to(dev, F32).reshape(-1)[:1].to(act_dtype)
            t["quant_bias"] = tensors["quant_bias"].to(dev, torch.int32)
            full = deq_scale_fp32(tensors["deq_scale"]).to(dev)
            t["deq"] = npu.npu_trans_quant_param(full) if act_dtype == FP16 else full
            t["bias"] = None  # folded into quant_bias
        elif isinstance(scheme, W8A16):
            w = tensors["weight"].to(dev)
            ws = tensors["weight_scale"].to(dev, F32)
            off = tensors.get("weight_offset")
            groups = ws.shape[-1]
            t["weight"] = w.t()  # transpose view of (N, K): accepted by the op
            t["group_size"] = 0 if groups == 1 else k // groups
            shape = lambda v: v.reshape(-1) if groups == 1 else v.t().contiguous()  # noqa: E731
            t["aq_scale"] = shape(ws).to(act_dtype)
            t["aq_offset"] = None if off is None else shape(-off.to(dev, F32)).to(act_dtype)  # op adds the offset
            if not _exact_in(ws, act_dtype):
                notes.append(f"weight_scale rounded to {act_dtype} (the op needs antiquant_scale in the x dtype)")
            t["bias"] = None if bias is None else bias.to(dev, F32 if act_dtype == BF16 else FP16)
        elif isinstance(scheme, _MXBase):
            if self.soc == "A5":
                self._prepare_mx_native(npu, scheme, tensors, t, n, k, act_dtype, loc, bias32)
            else:
                self._prepare_mx_fallback(npu, scheme, tensors, t, n, k, act_dtype, loc, bias32, notes)
                _log_once((self.name, scheme.name), "backend %s: scheme %s runs as an exact fallback on %s: %s",
                          self.name, scheme.name, self.soc, cap.reason)
        else:
            raise NpuPrepareError(f"{loc}: NPU backend does not know scheme {type(scheme).__name__}")
        for note in notes:
            _log_once((self.name, scheme.name, note), "%s: %s", loc, note)
        return PreparedLinear(scheme, self.name, n, k, act_dtype, t, mode=mode, notes=notes)

    def _prepare_mx_native(self, npu, scheme, tensors, t, n, k, act_dtype, loc, bias32):
        dev = self.device
        ws = tensors["weight_scale"].to(dev)
        w = tensors["weight"].to(dev)
        if isinstance(scheme, MXFP4Dual):
            if k % DUAL_L0_BLOCK:
                raise NpuPrepareError(f"{loc}: dual-scale MXFP4 needs K per rank a multiple of {DUAL_L0_BLOCK}, got {k}")
            t["weight"] = npu.npu_format_cast(w.contiguous().view(torch.int8), ACL_FORMAT_FRACTAL_NZ,
                                              customize_dtype=torch.int8)
            t["w_l0"] = tensors["weight_dual_scale"].to(dev, F32).reshape(n, -1).t().contiguous()  # (K/512, N)
            t["w_l1"] = MX.to_scale_pairs(ws).contiguous()  # (N, K/64, 2)
            ms = tensors.get("mul_scale")
            t["smooth"] = None if ms is None else ms.to(dev, act_dtype)  # smooth_scale dtype == x dtype
            t["bias"] = bias32
            return
        if scheme.weight_fmt is E2M1 and k % 2:
            raise NpuPrepareError(f"{loc}: FP4 MX matmul needs an even K, got {k}")
        if scheme.weight_fmt is E4M3 and w.dtype == torch.uint8:
            w = w.view(torch.float8_e4m3fn)
        t["weight"] = w.t()  # (K, N) [FP4: (K/2, N)] transpose view, same transposition as the scale
        t["weight_scale"] = MX.to_scale_pairs(ws).contiguous().transpose(0, 1)  # (K/64, N, 2) view
        if isinstance(scheme, W4A8MXFP):
            t["bias"] = None if bias32 is None else bias32.to(act_dtype).reshape(1, -1)
        else:
            t["bias"] = bias32

    def _prepare_mx_fallback(self, npu, scheme, tensors, t, n, k, act_dtype, loc, bias32, notes):
        dev = self.device
        codes = tensors["weight_scale"].to(dev)
        vals = scheme.weight_values({**tensors, "weight": tensors["weight"].to(dev)}, k)  # exact fp32 (N, K)
        e = code_to_exponent(codes)  # (N, nb)
        t["bias_f32"] = bias32
        if scheme.weight_fmt is E2M1 and k > MX_BLOCK:
            # exact: value x2 is an integer in [-12, 12]; group scale 2^(e-1) (fp32 exact down to 2^-128)
            gscale = pow2(e) * 0.5
            if isinstance(scheme, MXFP4Dual):
                l0 = scheme.weight_l0({"weight_dual_scale": tensors["weight_dual_scale"].to(dev)})
                gscale = gscale * l0.repeat_interleave(DUAL_L0_BLOCK // MX_BLOCK, dim=-1)[:, :gscale.shape[-1]]
            s_act = gscale.to(act_dtype)
            exact = _exact_in(gscale, act_dtype)
            if exact or isinstance(scheme, MXFP4Dual):
                t["wq"] = (vals * 2).to(torch.int8).t()  # (K, N) transpose view
                t["aq_scale"] = s_act.t().contiguous()  # (ceil(K/32), N)
                t["bias"] = None if bias32 is None else bias32.to(F32 if act_dtype == BF16 else FP16)
                if not exact:
                    rel = ((s_act.to(F32) - gscale).abs() / gscale.clamp_min(1e-38)).max().item()
                    notes.append(f"dual-scale on {self.soc}: level-0 x 2^(e-1) group scales rounded to {act_dtype} "
                                 f"(max relative change {rel:.2e}); not bit-exact")
                return
            notes.append(f"power-of-two group scales fall outside {act_dtype}: weights decoded to fp32 once "
                         f"(4 bytes/weight), fp32 matmul")
        w = MX.mx_dequantize(vals, e)
        if isinstance(scheme, MXFP4Dual):
            w = dual_level_dequantize(vals, scheme.weight_l0({"weight_dual_scale": tensors["weight_dual_scale"].to(dev)}),
                                      e)
        if _exact_in(w, act_dtype):
            t["w_dense"] = w.to(act_dtype)
        else:
            t["w_dense"] = w
            notes.append(f"decoded weights are not representable in {act_dtype}: kept in fp32 (4 bytes/weight)")
        t["bias"] = bias32

    # ---- activation quantizer -------------------------------------------------------
    def _mx_dst(self, npu, fmt):
        return torch.float8_e4m3fn if fmt is E4M3 else npu.float4_e2m1fn_x2

    def quantize_activation(self, p: PreparedLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s, t = p.scheme, p.tensors
        npu = self.ops()
        x = x.to(p.act_dtype)
        if isinstance(s, W8A8Dynamic):
            q, sc = npu.npu_dynamic_quant(x, smooth_scales=t["smooth"])
            return {"x_q": q, "x_scale": sc}
        if isinstance(s, W8A8Static):
            x = apply_mul_scale(x, t["mul_scale"])
            return {"x_q": npu.npu_quantize(x, t["act_scale"], t["act_offset"], torch.qint8, -1, False)}
        if isinstance(s, W8A16):
            return {}
        if self.soc == "A5":
            if isinstance(s, MXFP4Dual):
                q, l0, l1 = npu.npu_dynamic_dual_level_mx_quant(x, smooth_scale=t["smooth"], round_mode=s.act_round_mode)
                return {"x_q": q, "x_l0": l0, "x_scale": l1}
            x = apply_mul_scale(x, t["mul_scale"])
            q, sc = npu.npu_dynamic_mx_quant(x, dst_type=self._mx_dst(npu, s.act_fmt), round_mode=s.act_round_mode,
                                             scale_alg=s.act_scale_alg)
            return {"x_q": q, "x_scale": sc}
        # A2/A3: no MX quantizer on the device; the fake-quantizer is the numerics rule run in torch
        return s.activation_storage(s.quantize_activation(x, t["mul_scale"]))

    # ---- apply ----------------------------------------------------------------------
    def apply(self, p: PreparedLinear, x: torch.Tensor, *, add_bias: bool = True) -> torch.Tensor:
        s, t = p.scheme, p.tensors
        npu = self.ops()
        out_dtype = x.dtype
        lead = x.shape[:-1]
        if x.shape[-1] != p.k:
            raise ValueError(f"input has {x.shape[-1]} features, layer expects K={p.k}")
        act = p.act_dtype
        x2 = x.reshape(-1, p.k).to(act)
        if isinstance(s, W8A8Dynamic):
            bias = t["bias"] if add_bias else None
            q, sc = npu.npu_dynamic_quant(x2, smooth_scales=t["smooth"])
            if "weights" not in t:
                out = npu.npu_quant_matmul(q, t["weight"], t["weight_scale"], pertoken_scale=sc, bias=bias,
                                           output_dtype=act)
            else:
                gs, acc = t["group_size"], None
                one = torch.ones(1, dtype=F32, device=q.device)
                for g, w in enumerate(t["weights"]):
                    part = npu.npu_quant_matmul(q[:, g * gs:(g + 1) * gs].contiguous(), w, one, output_dtype=torch.int32)
                    part = part.to(F32) * t["weight_scale"][:, g].reshape(1, -1)
                    acc = part if acc is None else acc + part
                out = acc * sc.unsqueeze(-1)
                if bias is not None:
                    out = out + bias
                out = out.to(act)
        elif isinstance(s, W8A8Static):
            xs = apply_mul_scale(x2, t["mul_scale"])
            q = npu.npu_quantize(xs, t["act_scale"], t["act_offset"], torch.qint8, -1, False)
            out = npu.npu_quant_matmul(q, t["weight"], t["deq"], bias=t["quant_bias"] if add_bias else None,
                                       output_dtype=act)
        elif isinstance(s, W8A16):
            xs = apply_mul_scale(x2, t["mul_scale"])
            out = npu.npu_weight_quant_batchmatmul(xs, t["weight"], t["aq_scale"], t["aq_offset"],
                                                   bias=t["bias"] if add_bias else None,
                                                   antiquant_group_size=t["group_size"])
        elif self.soc == "A5":
            out = self._apply_mx_native(npu, p, x2, add_bias)
        else:
            out = self._apply_mx_fallback(npu, p, x2, add_bias)
        return out.to(out_dtype).reshape(*lead, p.n)

    def _apply_mx_native(self, npu, p, x2, add_bias):
        s, t = p.scheme, p.tensors
        bias = t["bias"] if add_bias else None
        if isinstance(s, MXFP4Dual):
            q, l0, l1 = npu.npu_dynamic_dual_level_mx_quant(x2, smooth_scale=t["smooth"], round_mode=s.act_round_mode)
            return npu.npu_dual_level_quant_matmul(q, t["weight"], l0, t["w_l0"], l1, t["w_l1"], bias=bias,
                                                   output_dtype=p.act_dtype)
        xs = apply_mul_scale(x2, t["mul_scale"])
        q, sc = npu.npu_dynamic_mx_quant(xs, dst_type=self._mx_dst(npu, s.act_fmt), round_mode=s.act_round_mode,
                                         scale_alg=s.act_scale_alg)
        kw = dict(scale_dtype=npu.float8_e8m0fnu, pertoken_scale=sc, pertoken_scale_dtype=npu.float8_e8m0fnu,
                  bias=bias, output_dtype=p.act_dtype)
        if isinstance(s, MXFP4):
            kw.update(x1_dtype=npu.float4_e2m1fn_x2, x2_dtype=npu.float4_e2m1fn_x2, group_sizes=[1, 1, 32])
        elif isinstance(s, W4A8MXFP):
            kw.update(x2_dtype=npu.float4_e2m1fn_x2, group_sizes=[0, 0, 32])
        else:
            kw.update(group_sizes=[1, 1, 32])
        return npu.npu_quant_matmul(q, t["weight"], t["weight_scale"], **kw)

    def _apply_mx_fallback(self, npu, p, x2, add_bias):
        s, t = p.scheme, p.tensors
        act = p.act_dtype
        if self.act_fake_quant:
            r = s.quantize_activation(x2, t["mul_scale"])
            if isinstance(r, DualResult):
                xs = dual_level_dequantize(r.values, r.l0, r.exponents).to(act)
            else:
                xs = MX.mx_dequantize(r.values, r.exponents).to(act)
        else:
            xs = apply_mul_scale(x2, t["mul_scale"])
        if "wq" in t:
            return npu.npu_weight_quant_batchmatmul(xs, t["wq"], t["aq_scale"], None,
                                                    bias=t["bias"] if add_bias else None, antiquant_group_size=MX_BLOCK)
        bias = t["bias"] if add_bias else None
        w = t["w_dense"]
        if self.sim or w.dtype == F32:
            # the cube unit accumulates bf16/fp16 products in fp32 and rounds once: emulate exactly that
            return mx_matmul(xs.to(F32), w.to(F32), bias).to(act)
        out = torch.nn.functional.linear(xs, w).to(F32)  # pragma: no cover - real NPU only
        return (out if bias is None else out + bias).to(act)
