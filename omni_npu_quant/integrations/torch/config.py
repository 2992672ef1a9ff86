"""``QuantConfig``: what ``quantize_`` does to a model (serializable, versioned)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["QuantConfig", "CONFIG_VERSION", "FLOAT"]

CONFIG_VERSION = 1
# a per-layer scheme value meaning "keep this layer in float"
FLOAT = "float"


@dataclass
class QuantConfig:
    """Online quantization recipe.

    * ``scheme``: default scheme name or msModelSlim label for every selected ``nn.Linear``
      (``w8a8_dynamic``, ``w8a8_static``, ``mxfp8``, ``mxfp4``, ``w4a8_mxfp``, ``mxfp4_dual``, ...);
      ``"float"`` quantizes only the layers named in ``layer_schemes``.
    * ``ignored_layers``: patterns (``omni_npu_quant.integrations.selection`` grammar) kept in float.
    * ``layer_schemes``: ``{pattern: scheme}``; the value may be a scheme name, ``"float"``, or a dict
      ``{"scheme": name, **scheme_options}``.  The most specific pattern wins.
    * ``backend``: backend name (``reference``, ``npu``, ``npu-sim:A5``, ``cuda``...); ``None`` lets the
      platform dispatcher choose per scheme.
    * ``scheme_options``: constructor options of the default scheme (e.g. ``{"act_round_mode": "rint"}``).
    * ``keep_first_blocks``: keep the layers of the first N numbered blocks (``model.layers.0`` ...,
      ``blocks.0`` ...) in float -- the dual-scale online "bf16 fallback layers" option.
    * ``skip_incompatible``: layers the *default* scheme cannot take (e.g. dual-scale with K not a
      multiple of 512) stay float with a reason in the plan; explicitly selected layers always raise.
    * ``apply_defaults``: keep the per-architecture float layers of ``omni_npu_quant.models.defaults``
      (embedders, adaLN modulation, ``norm_out`` / ``proj_out``, ``lm_head``) in float.
    * ``num_bf16_fallback_layers``: keep the layers of N numbered blocks in float (vLLM-Omni's name);
      ``bf16_fallback_side`` says which: ``"first"`` (vLLM-Omni's behaviour), ``"last"`` or ``"both"``.
    """

    scheme: str = "mxfp4"
    ignored_layers: list[str] = field(default_factory=list)
    layer_schemes: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    scheme_options: dict[str, Any] = field(default_factory=dict)
    keep_first_blocks: int = 0
    skip_incompatible: bool = True
    apply_defaults: bool = True
    num_bf16_fallback_layers: int = 0
    bf16_fallback_side: str = "first"
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if isinstance(self.ignored_layers, str):
            self.ignored_layers = [self.ignored_layers]
        self.ignored_layers = list(self.ignored_layers or [])
        self.layer_schemes = dict(self.layer_schemes or {})
        self.scheme_options = dict(self.scheme_options or {})
        if not isinstance(self.scheme, str) or not self.scheme:
            raise ValueError(f"QuantConfig.scheme must be a scheme name, got {self.scheme!r}")
        if int(self.keep_first_blocks) < 0:
            raise ValueError(f"QuantConfig.keep_first_blocks must be >= 0, got {self.keep_first_blocks}")
        if int(self.num_bf16_fallback_layers) < 0:
            raise ValueError(f"QuantConfig.num_bf16_fallback_layers must be >= 0, got {self.num_bf16_fallback_layers}")
        if self.bf16_fallback_side not in ("first", "last", "both"):
            raise ValueError(f"QuantConfig.bf16_fallback_side must be 'first', 'last' or 'both', "
                             f"got {self.bf16_fallback_side!r}")
        if self.version != CONFIG_VERSION:
            raise ValueError(f"QuantConfig version {self.version} is not supported (this build reads {CONFIG_VERSION})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        if not isinstance(d, dict):
            raise TypeError(f"QuantConfig.from_dict needs a dict, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"QuantConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        d.setdefault("version", CONFIG_VERSION)
        return cls(**d)
