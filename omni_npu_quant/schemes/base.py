"""What a quantized linear stores, how it is validated and how a float weight is quantized.

A *tensor set* is a ``dict[str, Tensor]`` keyed by msModelSlim AscendV1 suffixes (``weight``,
``weight_scale``, ``weight_offset``, ``input_scale``, ``input_offset``, ``deq_scale``,
``quant_bias``, ``weight_dual_scale``, ``mul_scale``, ``bias``).  Weights are (N, K) = (out, in).
Schemes are kernel-free: the math of a forward pass lives in ``omni_npu_quant.numerics`` and
the compute in ``omni_npu_quant.kernels`` (``omni_npu_quant.kernels.reference_linear`` is the exact
reference forward).  Each concrete scheme lives in its own module and registers itself with
``@register_scheme`` (``omni_npu_quant.schemes.registry``).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["TensorSpec", "Scheme", "SchemeValidationError", "ACT_DTYPES", "ceil_div", "effective_mul_scale",
           "apply_mul_scale"]

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class SchemeValidationError(ValueError):
    """A tensor set does not match its scheme; the message names the layer and tensor."""


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor of a quantized linear.

    ``dtypes``: accepted on-disk dtypes (the first is what we write).  ``shape``: for the layer's
    (N, K).  ``input_dim`` / ``output_dim``: which axis is K (row-parallel shard) / N
    (column-parallel shard), ``None`` when the axis does not exist; they drive vLLM's parameter
    classes.  ``per_tensor``: one value per logical matrix (fused q/k/v get one each).
    """

    name: str
    dtypes: tuple[torch.dtype, ...]
    shape: tuple[int, ...]
    input_dim: int | None = None
    output_dim: int | None = None
    optional: bool = False
    per_tensor: bool = False
    doc: str = ""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Scheme(abc.ABC):
    """Base class.  Subclasses set ``name`` / ``label`` and implement the hooks."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # msModelSlim per-tensor label this scheme writes
    labels: ClassVar[tuple[str, ...]] = ()  # every label read as this scheme (``label`` first); set by register_scheme
    weight_bits: ClassVar[int] = 16
    order: ClassVar[int] = 100  # display order in tables
    needs_calibration: ClassVar[bool] = False  # True: cannot be quantized online from float weights alone
    in_main_job: ClassVar[bool] = False  # one of the schemes the demo and docs call "every scheme"
    weight_only: ClassVar[bool] = False  # activations are not quantized (no activation quantizer)
    bias_in_quant_bias: ClassVar[bool] = False  # the float bias is folded into an int32 quant_bias
    per_group_scales: ClassVar[bool] = False  # weight_scale may be (N, K/group) (tensor_specs takes groups=)
    row_amax_weight_scale: ClassVar[bool] = False  # online weight scale per output row from the row's amax
    rows_independent: ClassVar[bool] = False  # quantize_weight of a row chunk == those rows of the whole (chunkable)

    # ---- storage ----------------------------------------------------------------------
    @abc.abstractmethod
    def tensor_specs(self, n: int, k: int, *, has_bias: bool = False) -> list[TensorSpec]:
        """The stored tensors of an (N, K) layer."""

    def specs_for(self, tensors: dict[str, torch.Tensor], n: int, k: int) -> list[TensorSpec]:
        """The specs that apply to this tensor set (per-group schemes read the group count)."""
        return self.tensor_specs(n, k, has_bias="bias" in tensors)

    def k_from_weight_cols(self, cols: int) -> int:
        """K of a stored 2-D ``weight`` with ``cols`` columns (packed formats hold several values per byte)."""
        return int(cols)

    def infer_shape(self, tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(N, K) from a tensor set (K of packed FP4 weights is 2x the stored columns)."""
        w = tensors.get("weight")
        if w is None or w.dim() != 2:
            raise SchemeValidationError(f"{self.name}: a 2-D 'weight' is required")
        return int(w.shape[0]), int(w.shape[1])

    def validate(self, tensors: dict[str, torch.Tensor], *, n: int | None = None, k: int | None = None,
                 where: str = "", allow_extra: bool = False) -> tuple[int, int]:
        """Check names, dtypes and shapes; return (N, K).  Errors name ``where`` and the tensor."""
        loc = f"{where}: " if where else ""
        if n is None or k is None:
            n0, k0 = self.infer_shape(tensors)
            n = n if n is not None else n0
            k = k if k is not None else k0
        bad = self.shape_problem(n, k)
        if bad:
            raise SchemeValidationError(f"{loc}{bad}")
        specs = {s.name: s for s in self.specs_for(tensors, n, k)}
        for name, spec in specs.items():
            t = tensors.get(name)
            if t is None:
                if not spec.optional:
                    raise SchemeValidationError(
                        f"{loc}missing tensor '{name}' required by scheme {self.name} ({self.label}); "
                        f"expected {_fmt_dtypes(spec.dtypes)} {list(spec.shape)}")
                continue
            if t.dtype not in spec.dtypes:
                raise SchemeValidationError(
                    f"{loc}tensor '{name}' has dtype {t.dtype}, scheme {self.name} expects {_fmt_dtypes(spec.dtypes)}")
            if not _shape_ok(tuple(t.shape), spec.shape):
                raise SchemeValidationError(
                    f"{loc}tensor '{name}' has shape {list(t.shape)}, scheme {self.name} expects {list(spec.shape)} "
                    f"for a ({n}, {k}) weight")
        extra = sorted(set(tensors) - set(specs))
        if extra and not allow_extra:
            raise SchemeValidationError(f"{loc}unexpected tensor(s) {extra} for scheme {self.name} ({self.label})")
        self.check_values(tensors, n, k, loc)
        return n, k

    def check_values(self, tensors: dict[str, torch.Tensor], n: int, k: int, loc: str) -> None:
        """Value-level checks (E8M0 code 255, non-finite scales, ...)."""
        ms = tensors.get("mul_scale")
        if ms is not None:
            msf = ms.float()
            if not bool(torch.isfinite(msf).all()) or not bool((msf > 0).all()):
                raise SchemeValidationError(f"{loc}tensor 'mul_scale' must be finite and > 0 everywhere")

    # ---- shape rules ------------------------------------------------------------------
    k_multiple: ClassVar[int] = 1  # K (per tensor-parallel rank) must be a multiple of this

    def shape_problem(self, n: int, k: int) -> str | None:
        """Why this scheme cannot store an (N, K) linear, or None.  The one K rule of the scheme:
        the reader, the torch runtime, the vLLM methods, calibration and every kernel ask here."""
        if k <= 0 or n <= 0:
            return f"{self.name} needs N, K > 0, got N={n}, K={k}"
        if k % self.k_multiple:
            return f"{self.name} needs K a multiple of {self.k_multiple}, got K={k}"
        return None

    # ---- quantization -----------------------------------------------------------------
    @abc.abstractmethod
    def quantize_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None, **calib) -> dict[str, torch.Tensor]:
        """Float (N, K) weight (+ optional bias and calibration data) -> tensor set."""

    def quantize_weight_rows(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                             max_elements: int = 1 << 22, **calib) -> dict[str, torch.Tensor]:
        """``quantize_weight`` in bounded chunks of output rows, so the fp32 temporaries of a large layer
        stay small.  Only for schemes with ``rows_independent`` (their stored tensors are per output row,
        ``output_dim == 0``, or per tensor and identical in every chunk, which is checked); others whole."""
        n, k = int(weight.shape[0]), int(weight.shape[1])
        step = max(1, max_elements // max(1, k))
        if step >= n or not self.rows_independent:
            return self.quantize_weight(weight, bias, **calib)
        parts = [self.quantize_weight(weight[i:i + step], None if bias is None else bias[i:i + step], **calib)
                 for i in range(0, n, step)]
        rows = {sp.name for sp in self.tensor_specs(n, k, has_bias=bias is not None) if sp.output_dim == 0}
        out = {}
        for name in parts[0]:
            if name in rows:
                out[name] = torch.cat([p[name] for p in parts], dim=0)
            else:
                if any(not torch.equal(p[name], parts[0][name]) for p in parts[1:]):
                    raise ValueError(f"{self.name}: tensor '{name}' differs between row chunks; quantize it whole")
                out[name] = parts[0][name]
        return out

    @abc.abstractmethod
    def dequantize_weight(self, tensors: dict[str, torch.Tensor], k: int | None = None) -> torch.Tensor:
        """fp32 (N, K) weight that the stored tensors represent (exact where the format is)."""

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label}


def _fmt_dtypes(d: tuple[torch.dtype, ...]) -> str:
    return " or ".join(str(x).replace("torch.", "") for x in d)


def _shape_ok(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    # A (1,) tensor may be stored as a scalar () by some writers
    if want == (1,) and got in ((), (1,)):
        return True
    return got == want


def effective_mul_scale(mul_scale: torch.Tensor | None, act_dtype: torch.dtype) -> torch.Tensor | None:
    """The smoothing multiplier every backend applies: ``mul_scale`` rounded to the activation
    dtype, returned as fp32.  The NPU ops require it in the activation dtype
    (``npu_dynamic_quant`` smooth_scales, ``npu_dynamic_dual_level_mx_quant`` smooth_scale), so the
    reference and the CUDA mirror round it the same way."""
    if mul_scale is None:
        return None
    return mul_scale.to(act_dtype).to(torch.float32)


def apply_mul_scale(x: torch.Tensor, mul_scale: torch.Tensor | None) -> torch.Tensor:
    """Non-fused smoothing: ``x * mul_scale`` rounded to the activation dtype."""
    if mul_scale is None:
        return x
    return (x.to(torch.float32) * mul_scale.to(torch.float32)).to(x.dtype)

