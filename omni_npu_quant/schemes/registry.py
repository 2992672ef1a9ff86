"""Scheme names, msModelSlim labels and the one lookup function."""
from __future__ import annotations

from .base import Scheme
from .int8 import W8A16, W8A8Dynamic, W8A8Static
from .mx import MXFP4, MXFP8, MXFP4Dual, W4A8MXFP

SCHEMES: dict[str, type[Scheme]] = {c.name: c for c in (W8A8Dynamic, W8A8Static, W8A16, MXFP8, MXFP4, W4A8MXFP, MXFP4Dual)}

# msModelSlim per-tensor label -> scheme name.  W8A8_MIX (PD-mix) is served as static W8A8.
LABEL_TO_SCHEME = {
    "W8A8": "w8a8_static",
    "W8A8_MIX": "w8a8_static",
    "W8A8_DYNAMIC": "w8a8_dynamic",
    "W8A16": "w8a16",
    "W8A8_MXFP8": "mxfp8",
    "W4A4_MXFP4": "mxfp4",
    "W4A8_MXFP": "w4a8_mxfp",
    "W4A4_MXFP4_DUALSCALE": "mxfp4_dual",
}
# The schemes the main job and the docs call "every scheme".
MAIN_SCHEMES = ("w8a8_dynamic", "w8a8_static", "mxfp8", "mxfp4", "mxfp4_dual")


def get_scheme(name: str, **options) -> Scheme:
    """Scheme by name (``w8a8_dynamic``...) or msModelSlim label (``W4A4_MXFP4``...)."""
    key = LABEL_TO_SCHEME.get(name, name)
    if key not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; known: {sorted(SCHEMES)} and labels {sorted(LABEL_TO_SCHEME)}")
    return SCHEMES[key](**options)
