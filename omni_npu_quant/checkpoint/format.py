"""msModelSlim checkpoint vocabulary: file names, labels, the ``model_quant_type`` priority, suffixes.

Source: Ascend/msmodelslim 26.1.0 ``msmodelslim/core/quant_service/modelslim_v1/save/ascendv1.py``
(``QUANT_TYPE_PRIORITY``, ``post_run``) and ``save/utils/safetensors.py`` (shard names, index JSON);
see docs/checkpoints.md.
"""
from __future__ import annotations

import re

import torch

from ..schemes.registry import LABEL_TO_SCHEME, SCHEMES
from .layout import DESCRIPTION_FILE, GLOBAL_KEYS, LINEAR_SUFFIXES  # noqa: F401  (re-exported; defined in layout)

__all__ = [
    "DESC_V1", "WEIGHTS_V1", "INDEX_V1", "QUANT_TYPE_PRIORITY", "GLOBAL_KEYS", "LINEAR_SUFFIXES", "SERVED_LABELS",
    "KNOWN_UNSERVED_LABELS", "ST_DTYPES", "ST_NAMES", "model_quant_type", "shard_name", "natural_key",
]

DESC_V1 = DESCRIPTION_FILE
WEIGHTS_V1 = "quant_model_weights.safetensors"
INDEX_V1 = "quant_model_weights.safetensors.index.json"
DESC_RE = re.compile(r"^quant_model_description(?:_(?P<type>[a-z0-9_]+))?\.json$")
WEIGHT_RE = re.compile(r"^quant_model_weights?(?:_(?P<type>[a-z0-9_]+))?(?:-(?P<i>\d+)-of-(?P<n>\d+))?\.safetensors$")
INDEX_RE = re.compile(r"^quant_model_weights?(?:_[a-z0-9_]+)?\.safetensors\.index\.json$")

# low -> high; W4A8_DYNAMIC deliberately absent (an all-W4A8 model reports FLOAT)
QUANT_TYPE_PRIORITY = (
    "FLOAT", "W16A16S", "W8A16", "W8A8_DYNAMIC", "W8A8_MIX", "W8A8", "WFP8AFP8_DYNAMIC", "W8A8_MXFP8", "W4A8_MXFP",
    "W4A4_DYNAMIC", "W4A4_MXFP4", "W4A4_MXFP4_DUALSCALE", "W4A4_MXFP4_SVD",
)
MX_LABELS = ("W8A8_MXFP8", "W4A8_MXFP", "W4A4_MXFP4", "W4A4_MXFP4_DUALSCALE", "W4A4_MXFP4_SVD")

SERVED_LABELS = tuple(LABEL_TO_SCHEME)
KNOWN_UNSERVED_LABELS = tuple(lab for lab in ("W4A8_DYNAMIC", "W4A4_DYNAMIC", "W16A16S", "WFP8AFP8_DYNAMIC", "C8",
                                              "FAQuant", "FAKQuant", "W4A16") if lab not in LABEL_TO_SCHEME)

# safetensors dtype strings
ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
for _st, _name in (("F8_E8M0", "float8_e8m0fnu"), ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        ST_DTYPES[_st] = getattr(torch, _name)
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def model_quant_type(labels) -> str:
    """msModelSlim's summary: the highest-priority label present (``FLOAT`` when none ranks)."""
    best = "FLOAT"
    for lab in labels:
        # an SVD layer also reports its residual's label: the saver's residual handler runs inside on_svd_wrapper
        res = getattr(SCHEMES[LABEL_TO_SCHEME[lab]], "residual_cls", None) if lab in LABEL_TO_SCHEME else None
        for cand in (lab,) if res is None else (lab, res.label):
            if cand in QUANT_TYPE_PRIORITY and QUANT_TYPE_PRIORITY.index(cand) > QUANT_TYPE_PRIORITY.index(best):
                best = cand
    return best


def shard_name(i: int, n: int, prefix: str = "quant_model_weights") -> str:
    """``prefix-0000i-of-0000n.safetensors`` (5 digits up to 99999 shards, as msModelSlim)."""
    if n <= 99999:
        return f"{prefix}-{i:05d}-of-{n:05d}.safetensors"
    return f"{prefix}-{i}-of-{n}.safetensors"


def natural_key(s: str):
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
