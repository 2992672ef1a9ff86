"""The AscendV1 layout, in one place: tensor names, labels, description keys, shared-input rules.

Everything that spells an msModelSlim AscendV1 name lives here; the reader, the writer, the vLLM
config and methods, and calibration import it (docs/checkpoints.md, "Layout").

* A quantized Linear ``p`` stores ``p.<suffix>`` (``weight``, ``weight_scale``, ...), every tensor
  labelled with the layer's label, except ``p.bias`` which is fp32 labelled ``FLOAT`` (dual-scale:
  the layer's label).
* msModelSlim's non-fusion smoothing wraps the Linear: its tensors move to ``p.linear.<suffix>`` and
  the smoothing multiplier is ``p.div.mul_scale`` (fp32 ``[K]``, label ``FLOAT``).  In a tensor set
  (``{suffix: tensor}``) that multiplier is the suffix ``mul_scale``; a set with a ``mul_scale`` is
  always written wrapped.
* Unquantized tensors keep their name and dtype and are labelled ``FLOAT``.
* Description: one ``"<tensor key>": "<LABEL>"`` entry per stored tensor plus the global keys below.
  ``shared_input_groups`` is ours (msModelSlim never writes it; vllm-ascend looks labels up by exact
  ``<prefix>.weight`` key and only scans keys ending in ``.weight`` or containing ``norm.bias`` /
  ``shared_head`` / ``weight_packed``, so the extra top-level key is ignored there).

Sources: Ascend/msmodelslim 26.1.0 ``msmodelslim/core/quant_service/modelslim_v1/save/ascendv1.py``;
vllm-project/vllm-ascend ``vllm_ascend/quantization/modelslim_config.py`` (how the description is read);
vLLM ``packed_modules_mapping`` (``qkv_proj``, ``gate_up_proj``).
"""
from __future__ import annotations

from typing import Iterable, Mapping

__all__ = [
    "FLOAT_LABEL", "DUAL_SCALE_LABEL", "MUL_SCALE", "WRAP_LINEAR", "WRAP_DIV", "LINEAR_SUFFIXES", "WRAPPED_SUFFIXES",
    "DESCRIPTION_FILE", "GLOBAL_KEYS", "TRAILING_GLOBAL_KEYS", "SHARED_INPUT_GROUPS_KEY", "FA3_SUFFIX", "ONLINE_ROTATION_SUFFIXES",
    "SHARED_INPUT_TENSORS", "PACKED_MODULES", "tensor_key", "mul_scale_key", "linear_base", "bias_label",
    "layer_tensor_keys", "split_tensor_key", "wrapped_prefix_of_mul_scale", "weight_label", "packed_groups",
    "vllm_weight_renames", "parse_shared_input_groups", "msmodelslim_dtype", "scheme_suffixes",
]

FLOAT_LABEL = "FLOAT"
DUAL_SCALE_LABEL = "W4A4_MXFP4_DUALSCALE"  # its fp32 bias carries the layer's label (msModelSlim saver)
MUL_SCALE = "mul_scale"  # tensor-set suffix of the smoothing multiplier
WRAP_LINEAR = "linear"  # p.linear.<suffix>: the wrapped Linear's own tensors
WRAP_DIV = "div"  # p.div.mul_scale: the smoothing multiplier

# suffixes a quantized Linear may store (AscendV1 / V0); anything else under a quantized label is an error
LINEAR_SUFFIXES = ("weight", "weight_scale", "weight_offset", "input_scale", "input_offset", "deq_scale", "quant_bias",
                   "weight_dual_scale", "bias", "scale_bias", "weight_scale_second", "weight_offset_second",
                   "left_trans", "right_trans", "clip_ratio", "scale", "input_perm")
# the suffixes that move under p.linear.* in the non-fusion smooth wrapper (what we write and serve)
WRAPPED_SUFFIXES = ("weight", "weight_scale", "weight_offset", "weight_dual_scale", "bias", "deq_scale", "quant_bias",
                    "input_scale", "input_offset", "input_perm")

DESCRIPTION_FILE = "quant_model_description.json"  # the one name vllm-ascend reads (MODELSLIM_CONFIG_FILENAME)

# description keys that are not tensors
SHARED_INPUT_GROUPS_KEY = "shared_input_groups"
GLOBAL_KEYS = ("model_quant_type", "version", "group_size", "metadata", "optional", "kv_cache_type", "kv_quant_type",
               "fa_quant_type", "reduce_quant_type", "indexer_quant_type", SHARED_INPUT_GROUPS_KEY)
TRAILING_GLOBAL_KEYS = ("version", "model_quant_type", "metadata", "group_size", "optional")  # saver order, last
FA3_SUFFIX = ".quant_type"  # "<attn>.quant_type": FA3 per-attention entry, not a tensor
ONLINE_ROTATION_SUFFIXES = (".heads_rotation", ".kronecker_rotation_m", ".kronecker_rotation_n")

# tensors that must be identical across layers reading one input tensor (fused shards, recorded groups)
SHARED_INPUT_TENSORS = ("mul_scale", "input_scale", "input_offset")

# vLLM's packing (packed_modules_mapping of its Llama/Qwen-style models): these shards always become one GEMM
PACKED_MODULES: Mapping[str, tuple[str, ...]] = {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                                 "gate_up_proj": ("gate_proj", "up_proj")}


# ---- naming ----------------------------------------------------------------------------------
def linear_base(prefix: str, wrapped: bool) -> str:
    """Where a Linear's own tensors live: ``p`` or ``p.linear`` (non-fusion smooth wrapper)."""
    return f"{prefix}.{WRAP_LINEAR}" if wrapped else prefix


def mul_scale_key(prefix: str) -> str:
    return f"{prefix}.{WRAP_DIV}.{MUL_SCALE}"


def tensor_key(prefix: str, suffix: str, wrapped: bool) -> str:
    """The stored key of ``suffix`` of layer ``prefix``."""
    if suffix == MUL_SCALE:
        return mul_scale_key(prefix)
    return f"{linear_base(prefix, wrapped)}.{suffix}"


def bias_label(layer_label: str) -> str:
    return layer_label if layer_label == DUAL_SCALE_LABEL else FLOAT_LABEL


def layer_tensor_keys(prefix: str, label: str, suffixes: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``{suffix: (stored key, label)}`` for a quantized layer's tensor set (wrapped iff it has a mul_scale)."""
    suffixes = list(suffixes)
    wrapped = MUL_SCALE in suffixes
    out = {}
    for s in suffixes:
        lab = FLOAT_LABEL if s == MUL_SCALE else (bias_label(label) if s == "bias" else label)
        out[s] = (tensor_key(prefix, s, wrapped), lab)
    return out


def wrapped_prefix_of_mul_scale(key: str) -> str | None:
    """``p`` for ``p.div.mul_scale``, else None."""
    tail = f".{WRAP_DIV}.{MUL_SCALE}"
    return key[: -len(tail)] if key.endswith(tail) and len(key) > len(tail) else None


def split_tensor_key(key: str, keys: Iterable[str] | Mapping[str, object]) -> tuple[str, str, bool]:
    """``(layer prefix, suffix, wrapped)`` of a stored key; ``p.linear.<s>`` is wrapped when ``p.div.mul_scale``
    is among ``keys`` (the description's keys)."""
    base, _, suffix = key.rpartition(".")
    tail = f".{WRAP_LINEAR}"
    if base.endswith(tail):
        p = base[: -len(tail)]
        if p and mul_scale_key(p) in keys:
            return p, suffix, True
    return base, suffix, False


def weight_label(description: Mapping[str, object], prefix: str):
    """The label of layer ``prefix``'s weight (plain or wrapped), or None."""
    lab = description.get(f"{prefix}.weight")
    return lab if lab is not None else description.get(f"{prefix}.{WRAP_LINEAR}.weight")


def scheme_suffixes(n: int = 512, k: int = 512) -> set[str]:
    """Every tensor suffix the registered schemes declare (their TensorSpecs) for an (n, k) layer, but mul_scale.
    The schemes are the one place for their stored tensors (e.g. W4A16 ``input_perm``, SVD low-rank factors)."""
    from ..schemes.registry import SCHEMES, get_scheme

    out: set[str] = set()
    for name in SCHEMES:
        try:
            out |= {spec.name for spec in get_scheme(name).tensor_specs(n, k)}
        except ValueError:  # a scheme that cannot store this (n, k): its names come from the layer's own shape
            continue
    out.discard(MUL_SCALE)
    return out


def vllm_weight_renames() -> dict[str, str]:
    """Regex -> replacement mapping the wrapper's names back to vLLM parameter names (``p.<suffix>``)."""
    names = sorted(set(WRAPPED_SUFFIXES) | scheme_suffixes())
    return {rf"\.{WRAP_LINEAR}\.({'|'.join(names)})$": r".\1",
            rf"\.{WRAP_DIV}\.{MUL_SCALE}$": f".{MUL_SCALE}"}


# ---- shared inputs ---------------------------------------------------------------------------
def packed_groups(prefixes: Iterable[str]) -> list[list[str]]:
    """Groups of layer prefixes that vLLM packs into one GEMM (siblings under one parent, per PACKED_MODULES)."""
    by: dict[tuple[str, str], list[str]] = {}
    for p in prefixes:
        parent, _, leaf = p.rpartition(".")
        for packed, shards in PACKED_MODULES.items():
            if leaf in shards:
                by.setdefault((parent, packed), []).append(p)
    order = {leaf: i for shards in PACKED_MODULES.values() for i, leaf in enumerate(shards)}
    return [sorted(ms, key=lambda p: order[p.rpartition(".")[2]]) for ms in by.values() if len(ms) > 1]


def parse_shared_input_groups(value) -> list[list[str]]:
    """Check the ``shared_input_groups`` entry: a list of lists of >= 2 distinct layer names, each layer in at most
    one group.  Raises ValueError saying what is wrong."""
    if not isinstance(value, list):
        raise ValueError(f"'{SHARED_INPUT_GROUPS_KEY}' must be a list of lists of layer names, got "
                         f"{type(value).__name__}")
    seen: dict[str, int] = {}
    out = []
    for i, g in enumerate(value):
        if not isinstance(g, list) or not all(isinstance(m, str) and m for m in g):
            raise ValueError(f"'{SHARED_INPUT_GROUPS_KEY}[{i}]' must be a list of non-empty layer-name strings")
        if len(g) < 2:
            raise ValueError(f"'{SHARED_INPUT_GROUPS_KEY}[{i}]' has {len(g)} member(s); a group needs at least 2")
        for m in g:
            if m in seen:
                raise ValueError(f"layer {m!r} is in '{SHARED_INPUT_GROUPS_KEY}[{seen[m]}]' and "
                                 f"'{SHARED_INPUT_GROUPS_KEY}[{i}]'; a layer reads one input")
            seen[m] = i
        out.append(list(g))
    return out



# ---- storage dtypes msModelSlim 26.1.0 writes, per label and suffix ---------------------------
def msmodelslim_dtype(label: str, suffix: str, model_dtype=None):
    """The on-disk dtype msModelSlim's ascendv1_saver uses for ``suffix`` of a ``label`` layer (None: as given).

    Observed on real 26.1.0 outputs (tests/checkpoint/test_real_msmodelslim.py): every float scale / offset /
    ``weight_dual_scale`` / ``mul_scale`` / quantized-layer bias is fp32 (for a bf16 or fp16 model alike);
    W8A8 ``deq_scale`` is fp32 for a bf16 model and the int64 bit-pattern form otherwise; ``quant_bias`` int32;
    MXFP8 weights float8_e4m3fn; E8M0 scales and packed FP4 weights uint8."""
    import torch

    if suffix == "deq_scale":
        if model_dtype is None:
            return None
        return torch.float32 if model_dtype == torch.bfloat16 else torch.int64
    if suffix in ("weight_scale", "weight_offset") and label not in _MX_LABELS:
        return torch.float32
    if suffix in ("input_scale", "input_offset", "weight_dual_scale", MUL_SCALE, "bias"):
        return torch.float32
    if suffix == "quant_bias":
        return torch.int32
    if suffix == "weight" and label == "W8A8_MXFP8":
        return torch.float8_e4m3fn
    return None


_MX_LABELS = ("W8A8_MXFP8", "W4A8_MXFP", "W4A4_MXFP4", "W4A4_MXFP4_DUALSCALE", "W4A4_MXFP4_SVD")
