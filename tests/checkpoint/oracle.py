"""msModelSlim's own fake-quant IR modules rebuilt from saved tensors (test-time oracle, fp32 inputs).

Constructors read from msmodelslim 26.1.0 ``msmodelslim/ir/{w8a8_static,w8a8_dynamic,w8a8_mx_dynamic,
w4a4_mx_dynamic,w4a8_mx_dynamic,w4a4_mx_dynamic_dualscale}.py``: ``(x_q_param, w_q_param, w_q, bias)``.
MX classes take the unbiased exponent in block layout (N, K/32, 1) and dequantize ``value * 2**scale``
in the value's dtype, so weights are passed as exact fp32 element values.
"""
from __future__ import annotations

import torch

from omni_npu_quant.numerics import E2M1
from omni_npu_quant.numerics import mx as MX


def _deq(ds):
    return ds.to(torch.int32).view(torch.float32) if ds.dtype == torch.int64 else ds.float()


def build_ir(label: str, t: dict[str, torch.Tensor], k: int):
    import msmodelslim.ir as ir
    from msmodelslim.ir.qal import QDType, QParam, QScheme, QScope, QStorage

    bias = t.get("bias")
    if label in ("W8A8", "W8A8_MIX"):
        ds = _deq(t["deq_scale"])
        xs, xo = t["input_scale"].float().reshape(-1), t["input_offset"].float().reshape(-1)
        return ir.W8A8StaticFakeQuantLinear(
            QParam(QScheme(QScope.PER_TENSOR, QDType.INT8, False), ext={"scale": xs[0], "offset": xo[0]}),
            QParam(QScheme(QScope.PER_CHANNEL, QDType.INT8, True), ext={"scale": ds / xs[0]}),
            QStorage(QDType.INT8, t["weight"]), None if bias is None else bias.float())
    if label == "W8A8_DYNAMIC":
        return ir.W8A8DynamicPerChannelFakeQuantLinear(
            QParam(QScheme(QScope.PER_TOKEN, QDType.INT8, True), ext={}),
            QParam(QScheme(QScope.PER_CHANNEL, QDType.INT8, True), ext={"scale": t["weight_scale"].float().reshape(-1)}),
            QStorage(QDType.INT8, t["weight"]), None if bias is None else bias.float())
    n = t["weight"].shape[0]
    exp = (t["weight_scale"].to(torch.float32) - 127).reshape(n, -1, 1)
    if label == "W8A8_MXFP8":
        vals = t["weight"].view(torch.float8_e4m3fn).float() if t["weight"].dtype == torch.uint8 else t["weight"].float()
    else:
        vals = MX.mx_decode(t["weight"], E2M1, k)
    xdt, wdt = {"W8A8_MXFP8": (QDType.MXFP8, QDType.MXFP8), "W4A4_MXFP4": (QDType.MXFP4, QDType.MXFP4),
                "W4A8_MXFP": (QDType.MXFP8, QDType.MXFP4),
                "W4A4_MXFP4_DUALSCALE": (QDType.MXFP4, QDType.MXFP4)}[label]
    if label == "W4A4_MXFP4_DUALSCALE":
        ds = t["weight_dual_scale"].float()
        return ir.W4A4MXDynamicDualScaleFakeQuantLinear(
            QParam(QScheme(QScope.DUAL_SCALE, xdt, True), ext={"axes": -1, "dual_block_size": 512}),
            QParam(QScheme(QScope.DUAL_SCALE, wdt, True),
                   ext={"axes": -1, "dual_block_size": 512, "scale": exp, "dual_scale": ds, "offset": None}),
            QStorage(wdt, vals), None if bias is None else bias.float())
    cls = {"W8A8_MXFP8": ir.W8A8MXDynamicPerBlockFakeQuantLinear, "W4A4_MXFP4": ir.W4A4MXDynamicPerBlockFakeQuantLinear,
           "W4A8_MXFP": ir.W4A8MXDynamicPerBlockFakeQuantLinear}[label]
    return cls(QParam(QScheme(QScope.PER_BLOCK, xdt, True), ext={"axes": -1}),
               QParam(QScheme(QScope.PER_BLOCK, wdt, True), ext={"axes": -1, "scale": exp, "offset": torch.zeros_like(exp)}),
               QStorage(wdt, vals), None if bias is None else bias.float())
