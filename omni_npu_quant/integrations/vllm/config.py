"""vLLM ``QuantizationConfig`` classes (imports vLLM; registered by ``plugin.register``).

* ``omni_npu_quant`` -- checkpoint-driven: reads ``quant_model_description.json`` (msModelSlim AscendV1,
  or ours) and picks the scheme per layer from its labels.  FLOAT / ignored layers get vLLM's
  ``UnquantizedLinearMethod``; fused layers (``packed_modules_mapping``) must carry one label.
* ``omni_npu_<scheme>`` -- online: quantize the float checkpoint's weights at load time
  (``w8a8_dynamic``, ``mxfp8``, ``mxfp4``, ``w4a8_mxfp``, ``mxfp4_dual``, ``w8a16``).  ``w8a8_static``
  has no online method: it needs activation ranges (calibrate offline, then serve with ``omni_npu_quant``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from ...checkpoint.layout import DESCRIPTION_FILE, FLOAT_LABEL, weight_label
from ...schemes.registry import LABEL_TO_SCHEME, get_scheme, scheme_names
from ..selection import BLOCK_RE, compile_pattern
from .methods import OmniNpuLinearMethod

__all__ = ["OmniNpuQuantConfig", "OmniNpuOnlineConfig", "CHECKPOINT_METHOD", "ONLINE_SCHEMES", "online_method_name",
           "make_online_configs", "DESCRIPTION_FILE"]

log = logging.getLogger("omni_npu_quant.vllm")

CHECKPOINT_METHOD = "omni_npu_quant"
ONLINE_SCHEMES = scheme_names(online=True)  # every registered scheme that quantizes from float weights alone
ACT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def online_method_name(scheme: str) -> str:
    return f"omni_npu_{scheme}"


def _is_description(d: dict) -> bool:
    return any(isinstance(k, str) and k.endswith(".weight") for k in d) or "model_quant_type" in d


class _Base(QuantizationConfig):
    NAME = ""

    def __init__(self, *, backend: str | None = None, scheme_options: dict | None = None):
        super().__init__()
        self.backend = backend
        self.scheme_options = dict(scheme_options or {})

    def get_name(self):
        return self.NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return list(ACT_DTYPES)

    @classmethod
    def get_min_capability(cls) -> int:
        return 80  # CUDA paths (Triton); unused on NPU / CPU

    def _fused_shards(self, prefix: str) -> list[str]:
        head, _, last = prefix.rpartition(".")
        shards = (self.packed_modules_mapping or {}).get(last)
        if not shards:
            return [prefix]
        return [f"{head}.{s}" if head else s for s in shards]

    def _scheme(self, name: str):
        opts = self.scheme_options.get(name, {}) if isinstance(self.scheme_options.get(name), dict) else {}
        return get_scheme(name, **opts)


class OmniNpuQuantConfig(_Base):
    """Checkpoint-driven method ``omni_npu_quant``."""

    NAME = CHECKPOINT_METHOD

    def __init__(self, description: dict | None = None, *, description_file: str = DESCRIPTION_FILE,
                 backend: str | None = None, scheme_options: dict | None = None):
        super().__init__(backend=backend, scheme_options=scheme_options)
        self.description = dict(description) if description is not None else None
        self.description_file = description_file

    def __repr__(self) -> str:
        n = None if self.description is None else len(self.description)
        return f"OmniNpuQuantConfig(entries={n}, backend={self.backend})"

    @staticmethod
    def get_config_filenames() -> list[str]:
        return [DESCRIPTION_FILE]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "OmniNpuQuantConfig":
        if not isinstance(config, dict):
            raise TypeError(f"{CHECKPOINT_METHOD}: quantization config must be a dict, got {type(config).__name__}")
        if _is_description(config):
            return cls(description=config)
        qm = config.get("quant_method")
        if qm not in (None, CHECKPOINT_METHOD):
            raise ValueError(f"{CHECKPOINT_METHOD}: quantization_config has quant_method={qm!r}")
        # config.json marker: the description is read in maybe_update_config from the model directory
        return cls(None, description_file=config.get("description_file", DESCRIPTION_FILE),
                   backend=config.get("backend"), scheme_options=config.get("scheme_options"))

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        if isinstance(hf_quant_cfg, dict) and hf_quant_cfg.get("quant_method") == CHECKPOINT_METHOD \
                and user_quant in (None, CHECKPOINT_METHOD):
            return CHECKPOINT_METHOD
        return None

    def maybe_update_config(self, model_name: str, hf_config=None, revision=None):
        if self.description is not None:
            return
        path = Path(model_name) / self.description_file
        if not path.is_file():
            raise FileNotFoundError(f"{CHECKPOINT_METHOD}: {path} not found; the model directory must hold the "
                                    f"msModelSlim description (only local directories are supported)")
        self.description = json.loads(path.read_text(encoding="utf-8"))

    def apply_vllm_mapper(self, hf_to_vllm_mapper):
        if self.description is not None:
            self.description = hf_to_vllm_mapper.apply_dict(self.description)

    @staticmethod
    def get_checkpoint_weight_mapper():
        """Map msModelSlim's non-fusion smooth layout (``p.linear.*``, ``p.div.mul_scale``) back to ``p.*``."""
        import re

        from vllm.model_executor.models.utils import WeightsMapper

        from ...checkpoint.layout import vllm_weight_renames

        base = QuantizationConfig.get_checkpoint_weight_mapper()
        ours = WeightsMapper(orig_to_new_regex={re.compile(k): v for k, v in vllm_weight_renames().items()})
        return base | ours

    def label_for(self, prefix: str) -> str | None:
        """The per-layer label (``None`` = not quantized) for a vLLM module prefix."""
        if self.description is None:
            raise RuntimeError(f"{CHECKPOINT_METHOD}: no {self.description_file} was loaded")
        labels = {}
        for shard in self._fused_shards(prefix):
            labels[shard] = weight_label(self.description, shard)
        present = {s: l for s, l in labels.items() if l is not None}
        if not present:
            return None  # not described (e.g. lm_head of a model whose JSON omits it): unquantized
        if len(present) != len(labels):
            missing = [s for s in labels if labels[s] is None]
            raise ValueError(f"{CHECKPOINT_METHOD}: fused layer {prefix}: shard(s) {missing} are missing from "
                             f"{self.description_file}")
        uniq = set(present.values())
        if len(uniq) > 1:
            raise ValueError(f"{CHECKPOINT_METHOD}: fused layer {prefix} mixes labels {present}; all shards of a "
                             f"fused layer must share one scheme")
        lab = uniq.pop()
        return None if lab == FLOAT_LABEL else lab

    def get_quant_method(self, layer, prefix: str):
        if not isinstance(layer, LinearBase):
            return None
        label = self.label_for(prefix)
        if label is None:
            return UnquantizedLinearMethod()
        if label not in LABEL_TO_SCHEME:
            raise ValueError(f"{CHECKPOINT_METHOD}: layer {prefix} has label {label!r}, which this package does not "
                             f"serve (known: {sorted(LABEL_TO_SCHEME)})")
        name = LABEL_TO_SCHEME[label]
        gs = int(self.description.get("group_size", 0) or 0)
        return OmniNpuLinearMethod(self._scheme(name), prefix=prefix, online=False, backend=self.backend,
                                   group_size=gs)


class OmniNpuOnlineConfig(_Base):
    """Online method ``omni_npu_<scheme>``: float checkpoint, weights quantized at load time.

    ``quantization_config`` (or ``--hf-overrides``) keys: ``ignored_layers`` (selection grammar over vLLM
    module names, e.g. ``lm_head``, ``*.down_proj``, ``re:.*layers\\.0\\..*``), ``keep_first_blocks``,
    ``scheme_options`` (options of the scheme), ``backend``.
    """

    SCHEME = ""

    def __init__(self, *, ignored_layers=None, keep_first_blocks: int = 0, backend: str | None = None,
                 scheme_options: dict | None = None):
        super().__init__(backend=backend)
        self.options = dict(scheme_options or {})
        self.ignored_layers = list(ignored_layers or [])
        self._patterns = [compile_pattern(p, what=f"{self.NAME} ignored_layers") for p in self.ignored_layers]
        self.keep_first_blocks = int(keep_first_blocks or 0)
        get_scheme(self.SCHEME, **self.options)  # fail early on bad options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scheme={self.SCHEME}, ignored_layers={self.ignored_layers})"

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config or {})
        qm = config.pop("quant_method", None)
        if qm not in (None, cls.NAME):
            raise ValueError(f"{cls.NAME}: quantization_config has quant_method={qm!r}")
        known = {"ignored_layers", "keep_first_blocks", "backend", "scheme_options"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{cls.NAME}: unknown quantization_config key(s) {unknown}; known: {sorted(known)}")
        return cls(**config)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        if isinstance(hf_quant_cfg, dict) and hf_quant_cfg.get("quant_method") == cls.NAME \
                and user_quant in (None, cls.NAME):
            return cls.NAME
        return None

    def apply_vllm_mapper(self, hf_to_vllm_mapper):
        if self.ignored_layers:
            self.ignored_layers = hf_to_vllm_mapper.apply_list(self.ignored_layers)
            self._patterns = [compile_pattern(p, what=f"{self.NAME} ignored_layers") for p in self.ignored_layers]

    def is_ignored(self, prefix: str) -> bool:
        shards = self._fused_shards(prefix)
        hits = [any(p.matches(s) for p in self._patterns) for s in shards]
        if any(hits) and not all(hits) and not any(p.matches(prefix) for p in self._patterns):
            raise ValueError(f"{self.NAME}: ignored_layers select only some shards of fused layer {prefix} "
                             f"({shards}); ignore all of them or none")
        if any(p.matches(prefix) for p in self._patterns) or all(hits):
            return True
        if self.keep_first_blocks:
            m = BLOCK_RE.match(prefix)
            if m and int(m.group("idx")) < self.keep_first_blocks:
                return True
        return False

    def get_quant_method(self, layer, prefix: str):
        if not isinstance(layer, LinearBase):
            return None
        if self.is_ignored(prefix):
            return UnquantizedLinearMethod()
        return OmniNpuLinearMethod(get_scheme(self.SCHEME, **self.options), prefix=prefix, online=True,
                                   backend=self.backend)


def make_online_configs() -> dict[str, type]:
    out = {}
    for scheme in ONLINE_SCHEMES:
        name = online_method_name(scheme)
        cls_name = "OmniNpu" + "".join(p.capitalize() for p in scheme.split("_")) + "OnlineConfig"
        out[name] = type(cls_name, (OmniNpuOnlineConfig,), {"NAME": name, "SCHEME": scheme,
                                                            "__module__": __name__})
    return out
