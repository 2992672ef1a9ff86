"""vLLM ``QuantizationConfig`` classes (imports vLLM; registered by ``plugin.register``).

* ``omni_npu_quant`` -- checkpoint-driven: reads ``quant_model_description.json`` (msModelSlim AscendV1,
  or ours) and picks the scheme per layer from its labels.  FLOAT / ignored layers get vLLM's
  ``UnquantizedLinearMethod``; fused layers (``packed_modules_mapping``) must carry one label.
* ``omni_npu_<scheme>`` -- online: quantize the float checkpoint's weights at load time
  (``w8a8_dynamic``, ``mxfp8``, ``mxfp4``, ``w4a8_mxfp``, ``mxfp4_dual``, ``w8a16``).  ``w8a8_static``
  has no online method: it needs activation ranges (calibrate offline, then serve with ``omni_npu_quant``).
"""
from __future__ import annotations

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
    if "quant_method" in d or "method" in d:  # a config.json quantization_config (e.g. the writer's marker,
        return False  # which also carries model_quant_type), never an msModelSlim description
    return any(isinstance(k, str) and k.endswith(".weight") for k in d) or "model_quant_type" in d


# vLLM-Omni's spellings (vllm-project/vllm-omni ``vllm_omni/quantization/factory.py``: ``method`` is an alias of
# ``quant_method`` and a dict with ``method`` is passed to the config class's constructor; ``mxfp4_config.py``:
# ``ignored_layers`` / ``modules_to_not_convert``, ``num_bf16_fallback_layers`` = the leading ``blocks.N`` kept BF16)
OMNI_METHOD_KEY = "method"
# vLLM-Omni keys whose meaning our methods do not have: refused with the reason instead of a bare "unknown key"
OMNI_REFUSED_KEYS = {
    "is_checkpoint_serialized": "serialized checkpoints are served by the checkpoint method 'omni_npu_quant' "
                                "(an AscendV1 directory), not by an online omni_npu_<scheme> method",
    "is_checkpoint_mxfp4_serialized": "serialized checkpoints are served by the checkpoint method 'omni_npu_quant'",
    "is_checkpoint_int8_serialized": "serialized checkpoints are served by the checkpoint method 'omni_npu_quant'",
    "activation_scheme": "the activation scheme is part of the scheme (omni_npu_w8a8_dynamic is dynamic; static int8 "
                         "is a calibrated checkpoint served by 'omni_npu_quant')",
    "w4a8_fallback_steps": "per-denoise-step W4A8 fallback is a vLLM-Omni runtime policy our methods do not have",
    "w4a8_fallback_layers": "per-layer W4A8 fallback: quantize those layers with w4a8_mxfp offline instead",
    "mxfp4_scale_alg": "the MX activation scale rule is a scheme option: scheme_options {'scale_alg': ...} where the "
                       "scheme has it",
    "require_smooth_scale": "mul_scale comes from the checkpoint (omni-npu-quant calibrate), it is not switched here",
    "int8_layers": "per-layer schemes are written into the checkpoint (quantize --layer-scheme), not chosen here",
    "weight_block_size": "block sizes are fixed by each scheme",
}


def _method_of(config: dict, name: str) -> str | None:
    """The method a quantization_config names (``quant_method`` or vLLM-Omni's ``method``), checked against ours."""
    qm, m = config.get("quant_method"), config.get(OMNI_METHOD_KEY)
    if qm is not None and m is not None and qm != m:
        raise ValueError(f"{name}: quantization_config has quant_method={qm!r} and method={m!r}; they are aliases "
                         f"and must agree")
    v = qm if qm is not None else m
    if v not in (None, name):
        raise ValueError(f"{name}: quantization_config has method={v!r}")
    return v


def _refuse_keys(keys, name: str, known) -> None:
    refused = {k: OMNI_REFUSED_KEYS[k] for k in keys if k in OMNI_REFUSED_KEYS}
    if refused:
        raise ValueError(f"{name}: quantization_config key(s) not supported here: " +
                         "; ".join(f"{k}: {why}" for k, why in refused.items()))
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown quantization_config key(s) {unknown}; known: {sorted(known)}")


def omni_layer_pattern(text: str, *, what: str):
    """A pattern of our selection grammar, plus vLLM-Omni's bare module names: an entry without a dot, glob or
    ``re:`` (``img_mlp``, ``feed_forward``, ``to_out``) selects every layer that has a module of that name on its
    path (``transformer_blocks.3.img_mlp.net.2``), as vLLM-Omni's per-model tables use them."""
    import re

    t = text.strip() if isinstance(text, str) else text
    if isinstance(t, str) and t and "." not in t and not t.startswith("re:") and not set("*?[") & set(t):
        return compile_pattern(f"re:(?:.*\\.)?{re.escape(t)}(?:\\..*)?", what=what)
    return compile_pattern(text, what=what)


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

    # keys of the writer's config.json marker, accepted (and unused) when vLLM-Omni passes them to the constructor
    MARKER_KEYS = ("format", "model_quant_type", "version")

    def __init__(self, description: dict | None = None, *, description_file: str = DESCRIPTION_FILE,
                 backend: str | None = None, scheme_options: dict | None = None, ignored_layers=None,
                 modules_to_not_convert=None, num_bf16_fallback_layers: int = 0,
                 is_checkpoint_serialized: bool | None = None, **marker):
        super().__init__(backend=backend, scheme_options=scheme_options)
        if is_checkpoint_serialized is False:
            raise ValueError(f"{CHECKPOINT_METHOD}: is_checkpoint_serialized=False: this method serves quantized "
                             f"checkpoints; quantize a float checkpoint online with omni_npu_<scheme>")
        _refuse_keys(marker, CHECKPOINT_METHOD, ("description", "description_file", "backend", "scheme_options",
                                                 "ignored_layers", "modules_to_not_convert",
                                                 "num_bf16_fallback_layers", "is_checkpoint_serialized",
                                                 *self.MARKER_KEYS))
        if int(num_bf16_fallback_layers or 0):
            raise ValueError(f"{CHECKPOINT_METHOD}: num_bf16_fallback_layers={num_bf16_fallback_layers}: a quantized "
                             f"checkpoint already decides which layers are float; quantize with "
                             f"--num-bf16-fallback-layers {num_bf16_fallback_layers} instead")
        self.description = dict(description) if description is not None else None
        self.description_file = description_file
        self.model_dir: str | None = None  # set by maybe_update_config (SVD ranks are read from its headers)
        self._vllm_mappers: list = []  # hf_to_vllm mappers vLLM applied to the description
        self._svd_index: dict[str, tuple[int, int, str]] | None = None  # layer prefix -> (rank, K, file)
        # vLLM-Omni rebuilds an active config from a transformer's config.json when the disk says serialized and
        # the active config does not (factory.py ``_disk_marks_serialized``): a config without its description
        # (e.g. quantization_config={"method": "omni_npu_quant"}) is thereby replaced by the one on disk
        self.is_checkpoint_serialized = self.description is not None
        # vLLM-Omni writes the checkpoint's BF16 layers here: they must be float in the description too
        self.ignored_layers = list(ignored_layers or modules_to_not_convert or [])
        self._ignored = [omni_layer_pattern(p, what=f"{CHECKPOINT_METHOD} ignored_layers") for p in self.ignored_layers]

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
        _method_of(config, CHECKPOINT_METHOD)
        # config.json marker: the description inline ("description", so vLLM-Omni, which hands only this dict to
        # the config, has it) or read in maybe_update_config from the model directory
        rest = {k: v for k, v in config.items() if k not in ("quant_method", OMNI_METHOD_KEY)}
        rest.setdefault("description_file", DESCRIPTION_FILE)
        return cls(rest.pop("description", None), **rest)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        if isinstance(hf_quant_cfg, dict) and CHECKPOINT_METHOD in (hf_quant_cfg.get("quant_method"),
                                                                     hf_quant_cfg.get(OMNI_METHOD_KEY)) \
                and user_quant in (None, CHECKPOINT_METHOD):
            return CHECKPOINT_METHOD
        return None

    def maybe_update_config(self, model_name: str, hf_config=None, revision=None):
        self.model_dir = str(model_name)
        self._svd_index = None
        if self.description is not None:
            return
        from ...checkpoint.files import load_json, read_regular

        path = Path(model_name) / self.description_file
        if not path.exists():
            raise FileNotFoundError(f"{CHECKPOINT_METHOD}: {path} not found; the model directory must hold the "
                                    f"msModelSlim description (only local directories are supported)")
        try:  # the checkpoint reader's parsing contract: regular file only, strict and depth-bounded JSON
            desc = load_json(read_regular(path))
        except ValueError as e:
            raise ValueError(f"{CHECKPOINT_METHOD}: cannot read {path}: {e}") from None
        if not isinstance(desc, dict):
            raise ValueError(f"{CHECKPOINT_METHOD}: {path} must be a JSON object {{tensor key: label, ...}}")
        self.description = desc

    def apply_vllm_mapper(self, hf_to_vllm_mapper):
        if self.description is not None:
            self.description = hf_to_vllm_mapper.apply_dict(self.description)
        self._vllm_mappers.append(hf_to_vllm_mapper)
        self._svd_index = None

    # ---- SVD low-rank layers: the rank per (fused) shard -----------------------------------------------------------
    def svd_index(self) -> dict[str, tuple[int, int, str]]:
        """``{layer prefix (vLLM names): (rank, K, file)}`` from the ``<layer>.svd_lowrank_l1`` [rank, K] entries of
        the model directory's safetensors headers (headers only: no tensor is read)."""
        if self._svd_index is not None:
            return self._svd_index
        from ...checkpoint.files import HeaderError, read_header
        from ...schemes.svd_base import L1

        index: dict[str, tuple[int, int, str]] = {}
        root = Path(self.model_dir) if self.model_dir else None
        if root is None or not root.is_dir():
            self._svd_index = index
            return index
        mapper = self.get_checkpoint_weight_mapper()
        for f in sorted(root.glob("*.safetensors")):
            try:
                infos, _ = read_header(f, f.name)
            except HeaderError as e:
                raise ValueError(f"{CHECKPOINT_METHOD}: {f.name}: cannot read the safetensors header ({e})") from None
            for key, info in infos.items():
                if not key.endswith("." + L1):
                    continue
                name = mapper.map_name(key) or key
                for m in self._vllm_mappers:
                    name = m.map_name(name) or name
                if len(info.shape) != 2:
                    raise ValueError(f"{CHECKPOINT_METHOD}: {f.name}: tensor '{key}' must be [rank, K], got shape "
                                     f"{list(info.shape)}")
                index[name[: -len(L1) - 1]] = (int(info.shape[0]), int(info.shape[1]), f.name)
        self._svd_index = index
        return index

    def svd_ranks(self, prefix: str, scheme) -> list[int]:
        """The low-rank rank of each shard of SVD layer ``prefix`` (one entry per fused shard, in order).

        From the checkpoint's safetensors headers (``svd_lowrank_l1`` [rank, K]); ``scheme_options {<scheme>:
        {"rank": R}}`` overrides (and must then agree with the headers where they are readable).  Shards of a
        fused layer may have different ranks: the method stacks them (docs/svd.md section 5)."""
        shards = self._fused_shards(prefix)
        index = self.svd_index()
        found = {sh: index[sh][0] for sh in shards if sh in index}
        if scheme.rank is not None:
            bad = {sh: r for sh, r in found.items() if r != scheme.rank}
            if bad:
                raise ValueError(f"{CHECKPOINT_METHOD}: layer {prefix}: scheme_options give {scheme.name} rank "
                                 f"{scheme.rank}, but the checkpoint's svd_lowrank_l1 headers say {bad}")
            return [scheme.rank] * len(shards)
        missing = [sh for sh in shards if sh not in found]
        if missing:
            where = (f"the safetensors headers of {self.model_dir}" if self.model_dir
                     else "no model directory (maybe_update_config was not called)")
            raise ValueError(f"{CHECKPOINT_METHOD}: layer {prefix} is {scheme.name} but its rank is unknown: no "
                             f"'<layer>.svd_lowrank_l1' for {missing} in {where}; pass "
                             f"scheme_options {{'{scheme.name}': {{'rank': R}}}}")
        return [found[sh] for sh in shards]

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
        if lab != FLOAT_LABEL and any(p.matches(s) for p in self._ignored for s in [prefix, *labels]):
            raise ValueError(f"{CHECKPOINT_METHOD}: ignored_layers {self.ignored_layers} select {prefix}, but the "
                             f"checkpoint stores it quantized ({lab}); a checkpoint cannot be de-quantized at load "
                             f"time: quantize again with that layer in ignored_layers")
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
        scheme = self._scheme(name)
        ranks = self.svd_ranks(prefix, scheme) if getattr(scheme, "svd_lowrank", False) else None
        return OmniNpuLinearMethod(scheme, prefix=prefix, online=False, backend=self.backend, group_size=gs,
                                   svd_ranks=ranks)


class OmniNpuOnlineConfig(_Base):
    """Online method ``omni_npu_<scheme>``: float checkpoint, weights quantized at load time.

    ``quantization_config`` (or ``--hf-overrides``) keys: ``ignored_layers`` (selection grammar over vLLM
    module names, e.g. ``lm_head``, ``*.down_proj``, ``re:.*layers\\.0\\..*``), ``keep_first_blocks``,
    ``scheme_options`` (options of the scheme), ``backend``.
    """

    SCHEME = ""
    KNOWN_KEYS = ("ignored_layers", "modules_to_not_convert", "keep_first_blocks", "num_bf16_fallback_layers",
                  "backend", "scheme_options")

    def __init__(self, *, ignored_layers=None, keep_first_blocks: int = 0, backend: str | None = None,
                 scheme_options: dict | None = None, num_bf16_fallback_layers: int | None = None,
                 modules_to_not_convert=None, **extra):
        super().__init__(backend=backend)
        _refuse_keys(extra, self.NAME, self.KNOWN_KEYS)  # vLLM-Omni calls the constructor with the user's dict
        self.options = dict(scheme_options or {})
        self.ignored_layers = list(ignored_layers or modules_to_not_convert or [])
        self._patterns = [omni_layer_pattern(p, what=f"{self.NAME} ignored_layers") for p in self.ignored_layers]
        self.keep_first_blocks = int(keep_first_blocks or 0)
        if num_bf16_fallback_layers is not None:  # vLLM-Omni's name for the same thing: the leading N blocks
            n = int(num_bf16_fallback_layers)
            if n < 0:
                raise ValueError(f"{self.NAME}: num_bf16_fallback_layers must be >= 0, got {n}")
            if self.keep_first_blocks and self.keep_first_blocks != n:
                raise ValueError(f"{self.NAME}: keep_first_blocks={self.keep_first_blocks} and "
                                 f"num_bf16_fallback_layers={n} disagree (they mean the same thing)")
            self.keep_first_blocks = n
        get_scheme(self.SCHEME, **self.options)  # fail early on bad options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scheme={self.SCHEME}, ignored_layers={self.ignored_layers})"

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config or {})
        _method_of(config, cls.NAME)
        config.pop("quant_method", None)
        config.pop(OMNI_METHOD_KEY, None)
        _refuse_keys(config, cls.NAME, cls.KNOWN_KEYS)
        return cls(**config)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        if isinstance(hf_quant_cfg, dict) and cls.NAME in (hf_quant_cfg.get("quant_method"),
                                                           hf_quant_cfg.get(OMNI_METHOD_KEY)) \
                and user_quant in (None, cls.NAME):
            return cls.NAME
        return None

    def apply_vllm_mapper(self, hf_to_vllm_mapper):
        if self.ignored_layers:
            self.ignored_layers = hf_to_vllm_mapper.apply_list(self.ignored_layers)
            self._patterns = [omni_layer_pattern(p, what=f"{self.NAME} ignored_layers") for p in self.ignored_layers]

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
