"""CPU emulation of the torch_npu quantization ops ``omni_npu_quant`` calls.

Each op checks its arguments the way CANN documents them (npu_ops.md section 3; sources there)
and computes with ``omni_npu_quant.numerics`` -- no rule is re-implemented here.  A SoC profile
without MX kernels (A2/A3) raises the analogue of CANN's ``ACLNN_ERR_RUNTIME_ERROR 361001`` for MX
and dual-level ops; a bad argument raises ``NpuSimError`` ("161002 param invalid"), so a wrong call
in a backend fails on CPU exactly where it would fail on an Atlas machine.

Storage formats: ``npu_format_cast`` returns a new tensor (a copy, as the real op returns a tensor in
the new storage format) whose format is recorded on its *storage* (the ``UntypedStorage`` Python
object, which PyTorch keeps alive exactly as long as the storage), keyed by the tensor's layout
(storage offset, shape, strides, dtype).  So ``param.data = npu_format_cast(w, 29)`` and
``nn.Parameter(nz)`` keep FRACTAL_NZ, the record dies with the storage, and views made afterwards
(other strides or shape) read ND, as A5 forbids views of NZ tensors.
"""
from __future__ import annotations

import torch

from ..numerics import int8 as I
from ..numerics import mx as MX
from ..numerics.constants import (ACL_FORMAT_FRACTAL_NZ, ACL_FORMAT_ND, DUAL_L0_BLOCK, E2M1, E4M3, NPU_FLOAT4_E1M2FN_X2,
                                  NPU_FLOAT4_E2M1FN_X2, NPU_FLOAT8_E4M3FN, NPU_FLOAT8_E5M2, NPU_FLOAT8_E8M0FNU,
                                  NPU_HIFLOAT8, ROUND_MODES)
from ..numerics.e8m0 import code_to_exponent, exponent_to_code
from ..numerics.fp4 import encode_e2m1, pack_fp4
from ..numerics.fp8 import encode_e4m3
from ..numerics.gemm import dual_level_matmul, mx_matmul
from ..numerics.int4 import INT4_PER_INT32, pack_int4, unpack_int4
from ..numerics.mx_dual import dual_level_quantize
from .profiles import SocProfile

__all__ = ["NpuSimError", "NpuSimOps", "MAX_LAST_DIM"]

F32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
MAX_LAST_DIM = 65535
_SCALAR_TYPES = {15: BF16, 5: FP16, 6: F32, 3: torch.int32, 1: torch.int8, 0: torch.uint8, 16: torch.quint4x2}


class NpuSimError(RuntimeError):
    """An argument CANN would reject (161002) or a kernel the SoC lacks (361001)."""


def _kind(d) -> str:
    """A torch dtype, torch ScalarType int or torch_npu handle -> a short logical type name."""
    if d is None:
        return "none"
    if isinstance(d, int):
        npu = {NPU_HIFLOAT8: "hif8", NPU_FLOAT8_E5M2: "fp8_e5m2", NPU_FLOAT8_E4M3FN: "fp8_e4m3",
               NPU_FLOAT8_E8M0FNU: "e8m0", NPU_FLOAT4_E2M1FN_X2: "fp4_e2m1", NPU_FLOAT4_E1M2FN_X2: "fp4_e1m2"}
        if d in npu:
            return npu[d]
        if d in _SCALAR_TYPES:
            d = _SCALAR_TYPES[d]
        else:
            raise NpuSimError(f"161002 param invalid: unknown dtype handle {d}")
    names = {BF16: "bf16", FP16: "fp16", F32: "fp32", torch.int8: "int8", torch.qint8: "int8", torch.int32: "int32",
             torch.int64: "int64", torch.uint8: "uint8", torch.float8_e4m3fn: "fp8_e4m3",
             torch.float8_e5m2: "fp8_e5m2", torch.quint4x2: "int4"}
    if hasattr(torch, "float8_e8m0fnu"):
        names[torch.float8_e8m0fnu] = "e8m0"
    if d in names:
        return names[d]
    raise NpuSimError(f"161002 param invalid: unsupported dtype {d}")


_KIND_TO_DTYPE = {"bf16": BF16, "fp16": FP16, "fp32": F32, "int8": torch.int8, "int32": torch.int32}


_FORMATS_ATTR = "_omni_npu_sim_formats"  # {layout key: acl format} on the UntypedStorage object


def _layout_key(t: torch.Tensor) -> tuple:
    return (t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _fmt(t: torch.Tensor) -> int:
    try:
        tags = getattr(t.untyped_storage(), _FORMATS_ATTR, None)
    except (RuntimeError, NotImplementedError):  # tensors without a storage (meta/fake): base format
        return ACL_FORMAT_ND
    return tags.get(_layout_key(t), ACL_FORMAT_ND) if tags else ACL_FORMAT_ND


def _set_fmt(t: torch.Tensor, acl_format: int) -> None:
    st = t.untyped_storage()
    tags = getattr(st, _FORMATS_ATTR, None)
    if tags is None:
        tags = {}
        setattr(st, _FORMATS_ATTR, tags)
    if acl_format == ACL_FORMAT_ND:
        tags.pop(_layout_key(t), None)
    else:
        tags[_layout_key(t)] = int(acl_format)


def _is_t(t: torch.Tensor, a: int = -2, b: int = -1):
    """Whether dims (a, b) of ``t`` are swapped in memory (stride(a) < stride(b)): True / False, or
    None when a size-1 dim makes the layout ambiguous (then either transposition is accepted)."""
    if t.dim() < 2 or t.shape[a] == 1 or t.shape[b] == 1:
        return None
    return t.stride(a) < t.stride(b)


def _opplugin_transposed(t: torch.Tensor) -> bool:
    """op-plugin ``is_transpose_last_two_dims``: the last two dims are a transpose view of a contiguous tensor."""
    if not 2 <= t.dim() <= 6:
        return False
    d1, d2 = t.dim() - 1, t.dim() - 2
    if not (t.stride(d2) == 1 and t.stride(d1) == t.size(d2)):
        return False
    prod = t.size(d1) * t.size(d2)
    for b in range(t.dim() - 3, -1, -1):
        if t.stride(b) != prod:
            return False
        prod *= t.size(b)
    return not (t.size(d1) == 1 and t.size(d2) == 1)


def _same_t(p, q) -> bool:
    return p is None or q is None or p == q


def _need(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise NpuSimError(f"161002 param invalid in {op}: {msg}")


def _last_dims(op: str, **tensors) -> None:
    for name, t in tensors.items():
        _need(t.shape[-1] <= MAX_LAST_DIM, op, f"last dim of {name} is {t.shape[-1]} > {MAX_LAST_DIM}")


class NpuSimOps:
    """The op table of one emulated SoC; bound methods become ``torch_npu.<op>``."""

    def __init__(self, profile: SocProfile):
        self.profile = profile

    def _wq_bias_dtypes(self, x_dtype) -> tuple:
        """Bias dtypes of npu_weight_quant_batchmatmul (hicann/ops-nn aclnnWeightQuantBatchMatmulV2 constraints):
        A2/A3: fp32 for bf16 x, fp16 for fp16 x; Ascend 950 (A5): the x dtype, or fp32 when x is bf16."""
        if self.profile.name == "A5":
            return (BF16, F32) if x_dtype == BF16 else (FP16,)
        return (F32,) if x_dtype == BF16 else (FP16,)

    # ---- helpers --------------------------------------------------------------------
    def _mx_only(self, op: str) -> None:
        if not self.profile.has_mx:
            raise NpuSimError(
                f"{op}: ACLNN_ERR_RUNTIME_ERROR 361001: no kernel for this SoC ({self.profile.device_name}, "
                f"npu-sim {self.profile.name}); MX / dual-level kernels exist only on Ascend 950 (A5)")

    # ---- 3.1 ------------------------------------------------------------------------
    def npu_dynamic_quant(self, input, *, smooth_scales=None, group_index=None, dst_type=None, quant_mode="pertoken",
                          dst_type_max=0.0):
        op = "npu_dynamic_quant"
        _need(input.dtype in (FP16, BF16), op, f"input must be float16/bfloat16, got {input.dtype}")
        _need(input.dim() > 1, op, "input must have rank > 1")
        kind = "int8" if dst_type is None else _kind(dst_type)
        if kind in ("fp8_e4m3", "fp8_e5m2", "hif8"):
            self._mx_only(op + f"(dst_type={kind})")
            raise NotImplementedError(f"{op}: dst_type {kind} is not emulated")
        if kind == "int4":
            raise NotImplementedError(f"{op}: int4 (quint4x2) output is not emulated")
        _need(kind == "int8", op, f"dst_type must be torch.int8, got {dst_type}")
        _need(quant_mode == "pertoken" and dst_type_max == 0.0, op, "only quant_mode='pertoken' is emulated")
        if group_index is not None:
            raise NotImplementedError(f"{op}: group_index (MoE smooth scales) is not emulated")
        if smooth_scales is not None:
            _need(smooth_scales.dim() == 1 and smooth_scales.shape[0] == input.shape[-1], op,
                  f"smooth_scales must be 1-D of length {input.shape[-1]}, got {list(smooth_scales.shape)}")
            _need(smooth_scales.dtype == input.dtype, op,
                  f"smooth_scales dtype {smooth_scales.dtype} must equal input dtype {input.dtype}")
        return I.dynamic_quant_int8(input, smooth_scales)

    # ---- 3.2 ------------------------------------------------------------------------
    def npu_quantize(self, input, scales, zero_points, dtype, axis=1, div_mode=True):
        op = "npu_quantize"
        if div_mode:
            raise NotImplementedError(f"{op}: div_mode=True (aclnnQuantize) rounding is undocumented and not emulated")
        kind = _kind(dtype)
        if kind == "int4":
            raise NotImplementedError(f"{op}: quint4x2 output is not emulated")
        if kind in ("fp8_e4m3", "fp8_e5m2", "hif8"):
            self._mx_only(op + f"(dtype={kind})")
            raise NotImplementedError(f"{op}: {kind} output is not emulated")
        _need(kind == "int8", op, f"dtype must be torch.qint8, got {dtype}")
        _need(input.dtype in (FP16, BF16, F32), op, f"input must be fp16/bf16/fp32, got {input.dtype}")
        k = input.shape[-1]
        for name, t in (("scales", scales), ("zero_points", zero_points)):
            if t is None:
                continue
            _need(t.dtype == input.dtype, op, f"{name} dtype {t.dtype} must equal input dtype {input.dtype} (div_mode=False)")
            _need(t.dim() == 1 and t.shape[0] in (1, k), op, f"{name} must be 1-D of size 1 or {k}, got {list(t.shape)}")
        return I.static_quant_int8(input, scales, zero_points)

    # ---- 3.3 ------------------------------------------------------------------------
    def npu_trans_quant_param(self, scale, offset=None, round_mode=0):
        op = "npu_trans_quant_param"
        _need(scale.dtype == F32, op, f"scale must be float32, got {scale.dtype}")
        if offset is not None:
            _need(offset.dtype == F32, op, f"offset must be float32, got {offset.dtype}")
        return I.trans_quant_param(scale, offset, round_mode or 0)

    # ---- 3.4 ------------------------------------------------------------------------
    def npu_quant_matmul(self, x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None, output_dtype=None,
                         x1_dtype=None, x2_dtype=None, pertoken_scale_dtype=None, scale_dtype=None, group_sizes=None,
                         y_scale=None):
        op = "npu_quant_matmul"
        mx = (x1.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) or x1_dtype is not None or x2_dtype is not None
              or scale_dtype is not None or pertoken_scale_dtype is not None or group_sizes is not None)
        if mx:
            self._mx_only(op + " (MX / FP8 / FP4 mode)")
            return self._mx_matmul(x1, x2, scale, pertoken_scale=pertoken_scale, bias=bias, output_dtype=output_dtype,
                                   x1_dtype=x1_dtype, x2_dtype=x2_dtype, scale_dtype=scale_dtype,
                                   pertoken_scale_dtype=pertoken_scale_dtype, group_sizes=group_sizes,
                                   offset=offset, y_scale=y_scale)
        return self._int8_matmul(x1, x2, scale, offset=offset, pertoken_scale=pertoken_scale, bias=bias,
                                 output_dtype=output_dtype, y_scale=y_scale)

    def _x2_nk(self, op: str, x2: torch.Tensor, k: int) -> torch.Tensor:
        """x2 logical (K, N): ND contiguous, FRACTAL_NZ, or the transpose view of (N, K) -> (N, K) view."""
        _need(x2.dim() == 2, op, f"x2 must be 2-D (K, N), got {list(x2.shape)}")
        _need(x2.is_contiguous() or _is_t(x2) is not False, op, "x2 must be contiguous, FRACTAL_NZ or a transpose view of (N, K)")
        _need(x2.shape[0] == k, op, f"x1 has K={k} but x2 is {list(x2.shape)} (expected ({k}, N))")
        return x2.transpose(0, 1)

    def _int8_matmul(self, x1, x2, scale, *, offset, pertoken_scale, bias, output_dtype, y_scale):
        op = "npu_quant_matmul"
        if x1.dtype == torch.int32 or x2.dtype == torch.int32:
            raise NotImplementedError(f"{op}: int4 x int4 / int8 x int4 (int32-packed) modes are not emulated")
        _need(x1.dtype == torch.int8 and x2.dtype == torch.int8, op,
              f"int8 mode needs int8 x1/x2, got {x1.dtype}/{x2.dtype}")
        _need(2 <= x1.dim() <= 6, op, f"x1 must be 2-6-D, got {x1.dim()}-D")
        _need(y_scale is None, op, "y_scale is reserved on this path")
        _last_dims(op, x1=x1, x2=x2)
        k = x1.shape[-1]
        w_nk = self._x2_nk(op, x2, k)
        n = w_nk.shape[0]
        # output_dtype=None means int8 (torch-npu wheel 2.14.0: torch_npu/_op_plugin_docs.py, npu_quant_matmul,
        # output_dtype entry; Ascend/op-plugin op_plugin/ops/opapi/QuantMatmulKernelNpuOpApi.cpp allocates kChar)
        out_kind = "int8" if output_dtype is None else _kind(output_dtype)
        _need(out_kind in ("fp16", "bf16", "int8", "int32"), op, f"output_dtype {output_dtype} not supported for int8")
        sk = _kind(scale.dtype)
        _need(sk != "fp16", op, "Tensor scale not implemented for DT_FLOAT16")
        _need(scale.dim() == 1 and scale.shape[0] in (1, n), op, f"scale must be (1,) or ({n},), got {list(scale.shape)}")
        lead = x1.shape[:-1]
        a = x1.reshape(-1, k)
        acc = I.int8_matmul(a, w_nk)  # exact int32
        bk = None if bias is None else _kind(bias.dtype)
        if bias is not None:
            _need(bias.dim() == 1 and bias.shape[0] == n, op, f"bias must be ({n},), got {list(bias.shape)}")
        if pertoken_scale is not None:
            _need(out_kind in ("fp16", "bf16"), op,
                  "pertoken_scale needs float16/bfloat16 output" + (" (output_dtype=None means int8)"
                                                                    if output_dtype is None else ""))
            _need(pertoken_scale.dtype == F32, op, f"pertoken_scale must be float32, got {pertoken_scale.dtype}")
            # 1-D (m,) with m of x1 (torch-npu wheel 2.14.0: torch_npu/_op_plugin_docs.py, pertoken_scale entry);
            # for batched x1 (..., m, k) the same m scales are applied to every batch (our reading)
            m = x1.shape[-2]
            _need(pertoken_scale.dim() == 1 and pertoken_scale.shape[0] == m, op,
                  f"pertoken_scale must be 1-D ({m},) (m of x1 {list(x1.shape)}), got {list(pertoken_scale.shape)}")
            _need(sk == "fp32" or (sk == "bf16" and out_kind == "bf16"), op,
                  f"scale dtype {scale.dtype} not allowed with pertoken_scale and {out_kind} output")
            _need(bk in (None, "int32", "bf16", "fp32", "fp16"), op, f"bias dtype {bias.dtype if bias is not None else None}")
            v = acc + bias if bk == "int32" else acc
            per_row = pertoken_scale.to(F32).repeat(a.shape[0] // m if m else 1).reshape(-1, 1)[:a.shape[0]]
            out = v.to(F32) * scale.to(F32) * per_row
            if bk in ("bf16", "fp32", "fp16"):
                out = out + bias.to(F32)
            return out.to(_KIND_TO_DTYPE[out_kind]).reshape(*lead, n)
        if out_kind == "int32":
            _need(sk in ("fp32", "bf16"), op, f"int32 output takes a fp32/bf16 scale, got {scale.dtype}")
            _need(bk in (None, "int32"), op, "int32 output takes an int32 bias")
            return (acc if bias is None else acc + bias).reshape(*lead, n)
        if out_kind == "bf16":
            _need(sk in ("fp32", "bf16"), op, f"bfloat16 output takes a fp32/bf16 scale, got {scale.dtype}")
            _need(bk in (None, "int32", "bf16", "fp32", "fp16"), op, f"bias dtype {bias.dtype if bias is not None else None}")
            v = acc + bias if bk == "int32" else acc
            out = v.to(F32) * scale.to(F32)  # per-channel fp32 scale is not FP19-truncated (npu_ops.md 3.4 (b))
            if bk in ("bf16", "fp32", "fp16"):
                out = out + bias.to(F32)
            return out.to(BF16).reshape(*lead, n)
        # fp16 / int8 outputs: fp32 scales go through npu_trans_quant_param (FP19)
        _need(sk in ("int64", "fp32"), op, f"{out_kind} output takes an int64/fp32 scale, got {scale.dtype}")
        _need(bk in (None, "int32"), op, f"{out_kind} output without pertoken_scale takes an int32 bias only")
        d = I.decode_deq_scale(scale) if sk == "int64" else I.fp19_truncate(scale)
        v = (acc if bias is None else acc + bias).to(F32)
        if out_kind == "fp16":
            _need(offset is None, op, "offset is only valid with int8 output")
            return (v * d).to(FP16).reshape(*lead, n)
        s9 = torch.round(v * d).clamp(-256, 255)
        if offset is not None:
            _need(offset.dtype == F32, op, f"offset must be float32, got {offset.dtype}")
            s9 = s9 + torch.round(offset.to(F32)).clamp(-256, 255)
        return s9.clamp(-128, 127).to(torch.int8).reshape(*lead, n)

    def _mx_matmul(self, x1, x2, scale, *, pertoken_scale, bias, output_dtype, x1_dtype, x2_dtype, scale_dtype,
                   pertoken_scale_dtype, group_sizes, offset, y_scale):
        op = "npu_quant_matmul"
        _need(offset is None and y_scale is None, op, "offset / y_scale are not used by the MX modes")
        _need(_kind(scale_dtype) == "e8m0" and _kind(pertoken_scale_dtype) == "e8m0", op,
              "MX modes need scale_dtype=pertoken_scale_dtype=torch_npu.float8_e8m0fnu")
        _need(pertoken_scale is not None, op, "MX modes need pertoken_scale (the activation E8M0 scales)")
        _need(x1.dim() == 2 and x2.dim() == 2, op, "MX mode is emulated for 2-D x1/x2 only")
        _need(_is_t(x1) is not True, op, "x1 must not be transposed")
        fp4_1 = x1_dtype is not None and _kind(x1_dtype) == "fp4_e2m1"
        fp4_2 = x2_dtype is not None and _kind(x2_dtype) == "fp4_e2m1"
        if x1_dtype is not None:
            _need(_kind(x1_dtype) in ("fp4_e2m1", "fp8_e4m3"), op, f"x1_dtype {x1_dtype} not supported")
        if x2_dtype is not None:
            _need(_kind(x2_dtype) in ("fp4_e2m1", "fp8_e4m3"), op, f"x2_dtype {x2_dtype} not supported")
        if fp4_1:
            _need(x1.dtype in (torch.uint8, torch.int8), op, f"FP4 x1 must be packed uint8, got {x1.dtype}")
            k = 2 * x1.shape[-1]
        else:
            _need(x1.dtype == torch.float8_e4m3fn, op, f"x1 must be float8_e4m3fn (or FP4 with x1_dtype), got {x1.dtype}")
            k = x1.shape[-1]
        if fp4_2:
            _need(x2.dtype in (torch.uint8, torch.int8), op, f"FP4 x2 must be packed uint8, got {x2.dtype}")
            _need(_is_t(x2) is not False or _fmt(x2) == ACL_FORMAT_FRACTAL_NZ, op,
                  "FP4 x2 must be the transpose view of the (N, K/2) weight (packed along K)")
            _need(2 * x2.shape[0] == k, op, f"x2 packs {2 * x2.shape[0]} K elements, x1 has {k}")
            w_codes = x2.transpose(0, 1).contiguous().view(torch.uint8)
            w_vals = MX.mx_decode(w_codes, E2M1, k)
        else:
            _need(x2.dtype == torch.float8_e4m3fn, op, f"x2 must be float8_e4m3fn (or FP4 with x2_dtype), got {x2.dtype}")
            _need(x2.shape[0] == k, op, f"x1 has K={k} but x2 is {list(x2.shape)}")
            _need(x2.is_contiguous() or _is_t(x2) is not False, op, "x2 must be contiguous or a transpose view")
            w_vals = MX.mx_decode(x2.transpose(0, 1), E4M3)
        if fp4_1 or fp4_2:
            _need(k % 2 == 0 and k > 2, op, f"FP4 needs an even K > 2, got {k}")
        w4a8 = fp4_2 and not fp4_1
        _need(not (fp4_1 and not fp4_2), op, "FP4 x1 needs FP4 x2")
        want_gs = [0, 0, 32] if w4a8 else [1, 1, 32]
        _need(group_sizes is not None and list(group_sizes) == want_gs, op,
              f"group_sizes must be {want_gs} for this MX mode, got {group_sizes}")
        m, n = x1.shape[0], w_vals.shape[0]
        _last_dims(op, x1=x1, x2=x2)
        nb = MX.num_blocks(k)
        npairs = -(-nb // 2)
        _need(pertoken_scale.dtype == torch.uint8 and tuple(pertoken_scale.shape) == (m, npairs, 2), op,
              f"pertoken_scale must be uint8 ({m}, {npairs}, 2), got {pertoken_scale.dtype} {list(pertoken_scale.shape)}")
        _need(scale.dtype == torch.uint8 and tuple(scale.shape) == (npairs, n, 2), op,
              f"scale must be uint8 ({npairs}, {n}, 2), got {scale.dtype} {list(scale.shape)}")
        _need(_same_t(_is_t(pertoken_scale, -3, -2), _is_t(x1)), op, "x1 and pertoken_scale must have the same transposition")
        _need(_same_t(_is_t(scale, -3, -2), _is_t(x2)), op, "x2 and scale must have the same transposition")
        out_kind = "int8" if output_dtype is None else _kind(output_dtype)  # None = int8, as in every mode
        _need(out_kind in (("bf16", "fp16") if w4a8 else ("bf16", "fp16", "fp32")), op,
              f"output_dtype {output_dtype} not supported in this MX mode"
              + (" (output_dtype=None means int8; pass output_dtype=torch.bfloat16 / float16)"
                 if output_dtype is None else ""))
        out_dtype = _KIND_TO_DTYPE[out_kind]
        if bias is not None:
            if w4a8:
                _need(bias.dtype == out_dtype and tuple(bias.shape) == (1, n), op,
                      f"W4A8 bias must be ({1}, {n}) in the output dtype {out_dtype}, got {bias.dtype} {list(bias.shape)}")
            else:
                _need(bias.dtype == F32 and tuple(bias.shape) == (n,), op,
                      f"MX bias must be float32 ({n},), got {bias.dtype} {list(bias.shape)}")
        x_vals = MX.mx_decode(x1.view(torch.uint8) if fp4_1 else x1, E2M1 if fp4_1 else E4M3, k)
        x_e = code_to_exponent(MX.from_scale_pairs(pertoken_scale, nb))
        w_e = code_to_exponent(MX.from_scale_pairs(scale.transpose(0, 1), nb))
        out = mx_matmul(MX.mx_dequantize(x_vals, x_e), MX.mx_dequantize(w_vals, w_e),
                        None if bias is None else bias.reshape(-1))
        return out.to(out_dtype)

    # ---- 3.5 ------------------------------------------------------------------------
    def npu_dynamic_mx_quant(self, input, *, axis=-1, round_mode="rint", dst_type=NPU_FLOAT4_E2M1FN_X2, block_size=32,
                             scale_alg=0, dst_type_max=0.0, max_low_bound=0.0):
        op = "npu_dynamic_mx_quant"
        self._mx_only(op)
        _need(input.dtype in (FP16, BF16, F32), op, f"input must be fp16/bf16/fp32, got {input.dtype}")
        _need(1 <= input.dim() <= 7, op, "input must be 1-7-D")
        kind = _kind(dst_type)
        if kind in ("fp8_e5m2", "fp4_e1m2"):
            raise NotImplementedError(f"{op}: dst_type {kind} is not emulated")
        _need(kind in ("fp8_e4m3", "fp4_e2m1"), op, f"dst_type {dst_type} not supported")
        fmt = E4M3 if kind == "fp8_e4m3" else E2M1
        _need(round_mode in ROUND_MODES, op, f"round_mode must be one of {ROUND_MODES}, got {round_mode!r}")
        _need(fmt is E2M1 or round_mode == "rint", op, "FP8 destinations support round_mode='rint' only")
        _need(block_size % 32 == 0 and 0 < block_size <= 1024, op, f"block_size must be a multiple of 32 <= 1024")
        alg = 0 if scale_alg is None else int(scale_alg)
        _need(alg in (0, 1, 2), op, f"scale_alg must be 0, 1 or 2, got {scale_alg}")
        _need(alg != 1 or fmt is E4M3, op, "scale_alg=1 is for FP8 destinations")
        _need(alg != 2 or (fmt is E2M1 and block_size == 32), op, "scale_alg=2 needs FP4 E2M1 and block_size=32")
        ax = axis % input.dim()
        if input.dtype == F32:
            _need(block_size == 32 and input.shape[ax] >= 32, op, "fp32 input needs block_size=32 and axis size >= 32")
        if max_low_bound:
            raise NotImplementedError(f"{op}: max_low_bound is not emulated")
        if fmt is E2M1:
            _need(ax == input.dim() - 1, op, "FP4 output is emulated along the last axis only")
            _need(input.shape[-1] % 2 == 0, op, "FP4 output needs an even last dim")
        r = MX.mx_quantize(input, fmt, round_mode, alg, block=block_size, axis=ax, dst_type_max=float(dst_type_max))
        y = MX.mx_encode(r.values.movedim(ax, -1), fmt).movedim(-1, ax)
        return y, MX.to_scale_pairs(r.codes, axis=ax - input.dim())

    # ---- 3.6 ------------------------------------------------------------------------
    def npu_dynamic_dual_level_mx_quant(self, input, *, smooth_scale=None, round_mode="rint"):
        op = "npu_dynamic_dual_level_mx_quant"
        self._mx_only(op)
        _need(input.dtype in (FP16, BF16), op, f"input must be bfloat16/float16, got {input.dtype}")
        _need(1 <= input.dim() <= 7 and input.shape[-1] % 2 == 0, op, "input must be 1-7-D with an even last dim")
        _need(round_mode in ROUND_MODES, op, f"round_mode must be one of {ROUND_MODES}")
        if smooth_scale is not None:
            _need(smooth_scale.dtype == input.dtype, op,
                  f"smooth_scale dtype {smooth_scale.dtype} must equal input dtype {input.dtype}")
            _need(smooth_scale.dim() == 1 and smooth_scale.shape[0] == input.shape[-1], op,
                  f"smooth_scale must be 1-D of length {input.shape[-1]}")
        r = dual_level_quantize(input, smooth_scale, round_mode)
        return MX.mx_encode(r.values, E2M1), r.l0, MX.to_scale_pairs(exponent_to_code(r.exponents))

    # ---- 3.7 ------------------------------------------------------------------------
    def npu_dual_level_quant_matmul(self, x1, x2, x1_level0_scale, x2_level0_scale, x1_level1_scale, x2_level1_scale,
                                    *, bias=None, output_dtype=15):
        op = "npu_dual_level_quant_matmul"
        self._mx_only(op)
        _need(x1.dim() == 2 and x1.dtype == torch.uint8 and x1.is_contiguous(), op,
              f"x1 must be contiguous uint8 (M, K/2) FP4, got {x1.dtype} {list(x1.shape)}")
        _need(x2.dim() == 2 and x2.dtype in (torch.uint8, torch.int8), op, "x2 must be 2-D (N, K/2) FP4 bytes")
        _need(_fmt(x2) == ACL_FORMAT_FRACTAL_NZ, op, "x2 must be FRACTAL_NZ (npu_format_cast(..., 29))")
        m, k = x1.shape[0], 2 * x1.shape[1]
        n = x2.shape[0]
        _need(2 * x2.shape[1] == k, op, f"x2 packs {2 * x2.shape[1]} K elements, x1 has {k}")
        _last_dims(op, x1=x1, x2=x2)
        nb0, nb1 = -(-k // DUAL_L0_BLOCK), MX.num_blocks(k)
        np_ = -(-nb1 // 2)
        for name, t, shape, dt in (("x1_level0_scale", x1_level0_scale, (m, nb0), F32),
                                   ("x2_level0_scale", x2_level0_scale, (nb0, n), F32),
                                   ("x1_level1_scale", x1_level1_scale, (m, np_, 2), torch.uint8),
                                   ("x2_level1_scale", x2_level1_scale, (n, np_, 2), torch.uint8)):
            _need(t.dtype == dt and tuple(t.shape) == shape, op,
                  f"{name} must be {dt} {list(shape)}, got {t.dtype} {list(t.shape)}")
        if bias is not None:
            _need(bias.dtype == F32 and tuple(bias.shape) == (n,), op, f"bias must be float32 ({n},)")
        out_kind = _kind(output_dtype)
        _need(out_kind in ("bf16", "fp16"), op, f"output_dtype must be bfloat16 (15) or float16 (5), got {output_dtype}")
        a = MX.mx_dequantize(MX.mx_decode(x1, E2M1, k), code_to_exponent(MX.from_scale_pairs(x1_level1_scale, nb1)))
        w = MX.mx_dequantize(MX.mx_decode(x2.contiguous().view(torch.uint8), E2M1, k),
                             code_to_exponent(MX.from_scale_pairs(x2_level1_scale, nb1)))
        out = dual_level_matmul(a, x1_level0_scale, w, x2_level0_scale.transpose(0, 1), bias)
        return out.to(_KIND_TO_DTYPE[out_kind])

    # ---- 3.8 ------------------------------------------------------------------------
    def npu_format_cast(self, input, acl_format, *, customize_dtype=None, input_dtype=None):
        """A copy of ``input`` in storage format ``acl_format`` (values and logical shape unchanged)."""
        fmt = self._check_format("npu_format_cast", input, acl_format)
        out = input.clone(memory_format=torch.contiguous_format)
        _set_fmt(out, fmt)
        return out

    def npu_format_cast_(self, input, acl_format, *, customize_dtype=None, input_dtype=None):
        """In place: ``input`` now reports ``acl_format`` (or the format of a tensor ``acl_format``)."""
        if isinstance(acl_format, torch.Tensor):
            acl_format = _fmt(acl_format)
        fmt = self._check_format("npu_format_cast_", input, acl_format)
        _set_fmt(input, fmt)
        return input

    @staticmethod
    def _check_format(op: str, input, acl_format) -> int:
        _need(isinstance(input, torch.Tensor), op, f"input must be a Tensor, got {type(input).__name__}")
        _need(isinstance(acl_format, int) and acl_format in (0, 2, 3, ACL_FORMAT_FRACTAL_NZ), op,
              f"unknown format {acl_format!r} (emulated: 0 NCHW, 2 ND, 3 NC1HWC0, 29 FRACTAL_NZ)")
        return ACL_FORMAT_ND if input.dim() < 2 else int(acl_format)  # 1-D tensors stay ND

    def get_npu_format(self, input):
        """The storage format as ``torch_npu.Format`` (an IntEnum, so it compares equal to the int)."""
        from ._module import Format

        return Format(_fmt(input))

    # ---- 3.9 ------------------------------------------------------------------------
    def npu_weight_quant_batchmatmul(self, x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None,
                                     quant_offset=None, bias=None, antiquant_group_size=0, inner_precise=0,
                                     weight_dtype=None):
        op = "npu_weight_quant_batchmatmul"
        _need(x.dtype in (FP16, BF16), op, f"x must be float16/bfloat16, got {x.dtype}")
        if weight.dtype == torch.int32 or weight_dtype is not None:
            return self._wqbmm_int4(x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias,
                                    antiquant_group_size, inner_precise, weight_dtype)
        _need(weight.dtype == torch.int8 and weight.dim() == 2, op, f"weight must be 2-D int8 (k, n), got {weight.dtype}")
        _need(quant_scale is None and quant_offset is None, op, "quant_scale/quant_offset (int8 output) are not emulated")
        _need(weight.is_contiguous() or _is_t(weight) is not False, op, "weight must be contiguous, NZ or a transpose view")
        k, n = weight.shape
        _need(x.shape[-1] == k, op, f"x has K={x.shape[-1]}, weight is {list(weight.shape)}")
        _last_dims(op, x=x, weight=weight)
        _need(antiquant_scale.dtype == x.dtype, op,
              f"antiquant_scale dtype {antiquant_scale.dtype} must equal x dtype {x.dtype} (int64 not emulated)")
        gs = int(antiquant_group_size)
        if gs:
            _need(gs % 32 == 0 and 32 <= gs <= k - 1, op, f"antiquant_group_size must be a multiple of 32 in [32, {k - 1}]")
            g = -(-k // gs)
            _need(tuple(antiquant_scale.shape) == (g, n), op, f"per-group antiquant_scale must be ({g}, {n})")
        else:
            _need(tuple(antiquant_scale.shape) in ((1,), (n,), (1, n)), op,
                  f"antiquant_scale must be (1,), ({n},) or (1, {n}), got {list(antiquant_scale.shape)}")
        if antiquant_offset is not None:
            _need(antiquant_offset.dtype == x.dtype and antiquant_offset.shape == antiquant_scale.shape, op,
                  "antiquant_offset must match antiquant_scale in dtype and shape")
        if bias is not None:
            want = self._wq_bias_dtypes(x.dtype)
            _need(bias.dtype in want and bias.numel() == n, op,
                  f"bias must be {' or '.join(map(str, want))} ({n},) for {x.dtype} x on {self.profile.name}, "
                  f"got {bias.dtype} {list(bias.shape)}")

        def rows(t):  # (k, n) fp32 view of a scale / offset
            t = t.to(F32)
            if gs:
                return t.repeat_interleave(gs, dim=0)[:k]
            return t.reshape(1, -1).expand(k, n)

        # one (k, n) layout whatever view the caller passed (a transpose view or a contiguous (k, n) weight): the CPU
        # fp32 GEMM's summation order follows the layout, and the emulated op must give the same result for the
        # same values (2026-12-02, an AMD EPYC CI machine: vllm-ascend's W8A16 weight and ours differed in 1 element)
        w = weight.to(F32).contiguous()
        if antiquant_offset is not None:
            w = w + rows(antiquant_offset)
        w = w * rows(antiquant_scale)  # high-precision path (inner_precise=0): fp32 dequant, fp32 accumulation
        lead = x.shape[:-1]
        out = mx_matmul(x.reshape(-1, k).to(F32), w.transpose(0, 1), None if bias is None else bias.reshape(-1))
        return out.to(x.dtype).reshape(*lead, n)

    def _wqbmm_int4(self, x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, group_size,
                    inner_precise, weight_dtype):
        """int4 weights carried in int32 (8 per int32, ``npu_convert_weight_to_int4pack``): A16W4.

        Contract: torch-npu wheel 2.14.0 ``torch_npu/_op_plugin_docs.py`` (npu_weight_quant_batchmatmul,
        npu_convert_weight_to_int4pack); hicann/ops-nn ``aclnnWeightQuantBatchMatmulV2`` (A2/A3 constraints).
        Numerics: the CANN reference golden (hicann/ops-nn
        ``matmul/weight_quant_batch_matmul_v2/tests/assets/wqbmmv2_kernel_golden.py``): the dequantized weight
        ``(w + offset) * scale`` is rounded to x's dtype after the add and after the multiply, the matmul
        accumulates in fp32, bias is added in fp32, then one cast to x's dtype.
        """
        op = "npu_weight_quant_batchmatmul"
        if weight_dtype is not None:
            _need(_kind(weight_dtype) == "int4", op,
                  f"weight_dtype must be None or torch.quint4x2 (int4 in int32), got {weight_dtype}")
        _need(weight.dtype == torch.int32, op,
              f"int4 weights are int32 holding 8 int4 each (npu_convert_weight_to_int4pack), got {weight.dtype}")
        _need(x.dim() == 2, op, f"x must be 2-D (M, K), got {x.dim()}-D {list(x.shape)}")
        _need(weight.dim() == 2, op, f"weight must be 2-D, got {weight.dim()}-D {list(weight.shape)}")
        if quant_scale is not None or quant_offset is not None:
            raise NotImplementedError(f"{op}: quant_scale/quant_offset (int8 output) are not emulated")
        _need(inner_precise in (0, 1), op, f"inner_precise must be 0 (high precision) or 1, got {inner_precise!r}")
        nz = _fmt(weight) == ACL_FORMAT_FRACTAL_NZ
        trans = _opplugin_transposed(weight)
        if trans:  # (K/8, N) transpose view of a contiguous (N, K/8): packed along K
            _need(weight.shape[0] != 1, op, f"an int4 weight of shape {list(weight.shape)} with transpose is not "
                                            f"supported (the x and weight K would not match); use a float matmul")
            k, n = INT4_PER_INT32 * weight.shape[0], weight.shape[1]
        else:
            _need(weight.is_contiguous(), op, "int4 weight must be contiguous (k, n/8), FRACTAL_NZ, or the transpose "
                                              "view (k/8, n) of a contiguous (n, k/8)")
            k, n = weight.shape[0], INT4_PER_INT32 * weight.shape[1]
        _need(x.shape[1] == k, op, f"x has K={x.shape[1]} but the int4 weight {list(weight.shape)} "
                                   f"({'transposed, ' if trans else ''}8 int4 per int32) holds K={k}, N={n}")
        a5 = self.profile.name == "A5"
        if a5:  # A5: m, k, n in [1, 2^31 - 1]; x not transposed (contiguous)
            _need(x.is_contiguous(), op, "x must be contiguous on A5 (no transposed x)")
        else:
            _need(1 <= k <= MAX_LAST_DIM and 1 <= n <= MAX_LAST_DIM, op,
                  f"K={k} and N={n} must lie in [1, {MAX_LAST_DIM}]")
        _need(x.shape[0] >= 1, op, "x must not be empty (M >= 1)")
        # scales / offsets: dtype of x; int64 scales and int32 offsets exist only for int8 weights
        _need(antiquant_scale.dtype == x.dtype, op,
              f"antiquant_scale dtype {antiquant_scale.dtype} must equal x dtype {x.dtype} for int4 weights "
              f"(int64 antiquant_scale needs an int8 weight)")
        gs = int(group_size)
        shape = tuple(antiquant_scale.shape)
        if gs:
            _need(gs % 32 == 0 and 32 <= gs <= k - 1, op,
                  f"antiquant_group_size must be a multiple of 32 in [32, K-1 = {k - 1}], got {gs}")
            g = -(-k // gs)
            _need(shape == (g, n), op, f"per-group antiquant_scale must be (ceil(K/group) = {g}, N = {n}), got {list(shape)}")
            mode = "per-group"
        elif shape in ((1,), (1, 1)):
            mode = "per-tensor"
        else:
            _need(shape in ((n,), (1, n)), op, f"antiquant_scale must be (1,) / (1, 1) per-tensor, ({n},) / (1, {n}) "
                                               f"per-channel, or (ceil(K/group), {n}) with antiquant_group_size; "
                                               f"got {list(shape)}")
            mode = "per-channel"
        if antiquant_offset is not None:
            _need(antiquant_offset.dtype == antiquant_scale.dtype, op,
                  f"antiquant_offset dtype {antiquant_offset.dtype} must equal antiquant_scale dtype "
                  f"{antiquant_scale.dtype} (int32 offsets need an int64 scale and an int8 weight)")
            _need(tuple(antiquant_offset.shape) == shape, op,
                  f"antiquant_offset shape {list(antiquant_offset.shape)} must equal antiquant_scale shape {list(shape)}")
        if nz and a5:  # Ascend 950: NZ for per-channel / per-group, weight and x not transposed
            _need(mode != "per-tensor" and not trans, op,
                  f"FRACTAL_NZ int4 weight on A5: per-channel or per-group with a non-transposed weight "
                  f"(got {mode}, transposed={trans})")
        elif nz:
            if mode == "per-group":
                _need(not trans and gs in (64, 128) and k % gs == 0 and n % 64 == 0, op,
                      f"FRACTAL_NZ int4 weight, per-group: weight not transposed, antiquant_group_size 64 or 128, "
                      f"K % group == 0, N % 64 == 0 (got transposed={trans}, group={gs}, K={k}, N={n})")
            elif mode == "per-channel":
                _need(trans, op, "FRACTAL_NZ int4 weight, per-channel: the weight must be transposed")
            else:
                _need(False, op, "FRACTAL_NZ int4 weight supports per-channel and per-group only, not per-tensor")
        if bias is not None:
            want = self._wq_bias_dtypes(x.dtype)
            _need(bias.dtype in want, op,
                  f"bias must be {' or '.join(map(str, want))} for {x.dtype} x on {self.profile.name}, got {bias.dtype}")
            _need(tuple(bias.shape) in ((n,), (1, n)), op, f"bias must be ({n},) or (1, {n}), got {list(bias.shape)}")

        w = unpack_int4(weight.transpose(0, 1).contiguous() if trans else weight)  # (N, K) or (K, N) int values
        w = (w.transpose(0, 1) if trans else w).to(F32)  # (K, N)

        def rows(t):  # scale / offset -> (K, N) fp32
            t = t.to(F32)
            if mode == "per-group":
                return t.repeat_interleave(gs, dim=0)[:k]
            return t.reshape(1, -1).expand(k, n)

        def rnd(t):  # the golden's truncate(): round to x's dtype and back
            return t.to(x.dtype).to(F32)

        if antiquant_offset is not None:
            w = rnd(w + rows(antiquant_offset))
        w = rnd(w * rows(antiquant_scale))
        out = mx_matmul(x.to(F32), w.transpose(0, 1), None if bias is None else bias.reshape(-1))
        return out.to(x.dtype)

    # ---- 3.10 -----------------------------------------------------------------------
    def npu_convert_weight_to_int4pack(self, weight, inner_k_tiles=0):
        """int32 (k, n) / (n, k) holding int4 values in [-8, 7] -> int32 (k, n/8) / (n, k/8), 8 per int32.

        torch-npu wheel 2.14.0 ``torch_npu/_op_plugin_docs.py``: input int32, ND or FRACTAL_NZ, contiguous, 2-D,
        last dim % 8 == 0, values in [-8, 7]; ``inner_k_tiles`` reserved; output int32 ND.  Packing: element i of 8
        at bits [4i, 4i+4), LSB first (``numerics.int4``).  An NZ input gives an NZ-tagged output (op-plugin
        ``ConvertWeightToINT4PackKernelNpuOpApi.cpp``).  On A5 op-plugin also packs fp32 tensors holding FP4
        E2M1 values (output: fp32 tensor carrying the packed bits); the emulator accepts exact E2M1 values only.
        """
        op = "npu_convert_weight_to_int4pack"
        _need(isinstance(weight, torch.Tensor), op, f"weight must be a Tensor, got {type(weight).__name__}")
        _need(isinstance(inner_k_tiles, int) and not isinstance(inner_k_tiles, bool), op,
              f"inner_k_tiles must be an int (reserved), got {inner_k_tiles!r}")
        _need(weight.dim() == 2, op, f"weight must be 2-D (k, n) or (n, k), got {weight.dim()}-D {list(weight.shape)}")
        _need(weight.is_contiguous(), op, "weight must be contiguous (non-contiguous tensors are not supported)")
        _need(weight.numel() > 0, op, f"weight must not be empty, got {list(weight.shape)}")
        _need(weight.shape[-1] % INT4_PER_INT32 == 0, op,
              f"the last dim of weight must be a multiple of 8, got {list(weight.shape)}")
        if weight.dtype == torch.int32:
            lo, hi = int(weight.min()), int(weight.max())
            _need(-8 <= lo and hi <= 7, op, f"weight values must lie in the int4 range [-8, 7], got [{lo}, {hi}]")
            out = pack_int4(weight)
        elif weight.dtype == F32:
            _need(self.profile.name == "A5", op, f"float32 (FP4 E2M1 values) weights are packed only on Ascend 950 "
                                                 f"(A5); {self.profile.device_name} takes int32 int4 values")
            try:
                codes = encode_e2m1(weight)
            except ValueError as e:
                raise NpuSimError(f"161002 param invalid in {op}: float32 weight must hold exact FP4 E2M1 values "
                                  f"(the NPU writes code 0 for others): {e}") from None
            out = pack_int4(torch.where(codes >= 8, codes.to(torch.int32) - 16, codes.to(torch.int32))).view(F32)
        else:
            _need(False, op, f"weight must be int32 (int4 values) or, on A5, float32 (FP4 values); got {weight.dtype}")
        if _fmt(weight) == ACL_FORMAT_FRACTAL_NZ:
            _set_fmt(out, ACL_FORMAT_FRACTAL_NZ)
        return out

    # ---- 3.11 -----------------------------------------------------------------------
    def npu_dtype_cast(self, input, dtype, input_dtype=None):
        kind = _kind(dtype)
        if kind == "fp8_e4m3":
            return encode_e4m3(input.to(F32))  # raises on a non-representable value
        if kind == "fp4_e2m1":
            return pack_fp4(encode_e2m1(input.to(F32)))
        if kind in ("fp8_e5m2", "hif8", "fp4_e1m2", "e8m0"):
            raise NotImplementedError(f"npu_dtype_cast to {kind} is not emulated")
        return input.to(_KIND_TO_DTYPE.get(kind, dtype))
