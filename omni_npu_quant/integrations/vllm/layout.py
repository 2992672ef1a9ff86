"""Mark a quantized pipeline directory for serving: each ``transformer*/config.json`` carries ``quantization_config``.

``omni-npu-quant quantize --model PIPE --out OUT`` and ``calibrate --pipeline`` write the pipeline
layout (``OUT/model_index.json``, ``OUT/transformer/``, ``OUT/transformer_2/``: one AscendV1
checkpoint each, ``omni_npu_quant.models.loading``).  vLLM-Omni resolves a transformer's
quantization from *that transformer's* ``config.json`` ``quantization_config``
(vllm-project/vllm-omni ``vllm_omni/quantization/factory.py``: ``read_checkpoint_quantization_config``,
``resolve_quantization_config_from_disk``, which builds ``{"method": quant_method, **other keys}`` and
hands the other keys to the config class's constructor), and vLLM's ``ModelConfig`` detects the
method from ``quantization_config`` through ``override_quantization_method``.  So each subfolder gets

    "quantization_config": {"quant_method": "omni_npu_quant", "is_checkpoint_serialized": true, "format": "ascendv1",
                            "description_file": "quant_model_description.json", "model_quant_type": ...,
                            "version": ..., "description": {... the description, inline ...}}

The description is inline (``inline_description=True``, the default) because vLLM-Omni gives the
config class only this dict, not the directory; ``is_checkpoint_serialized`` makes vLLM-Omni replace a
user's description-less ``{"method": "omni_npu_quant"}`` by this config (its ``_disk_marks_serialized``); vLLM's own path can also read the file
(``maybe_update_config``).  No vLLM import here: this runs where the checkpoint is written.

    python -m omni_npu_quant.integrations.vllm.layout OUT_DIR     # mark every transformer subfolder
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["mark_for_serving", "SERVING_METHOD"]

SERVING_METHOD = "omni_npu_quant"
_DESC = "quant_model_description.json"


def mark_for_serving(path, *, inline_description: bool = True) -> list[Path]:
    """Add ``quantization_config`` to the ``config.json`` of every quantized checkpoint under ``path``
    (the pipeline layout, or one checkpoint directory); returns the config files written."""
    from ...models.loading import ModelLoadError, quantized_layout

    out = []
    for sub, ck in quantized_layout(path).items():
        cfg_path = Path(ck) / "config.json"
        desc_path = Path(ck) / _DESC
        where = f"{path}/{sub}" if sub else str(path)
        if not cfg_path.is_file():
            raise ModelLoadError(f"{where}: no config.json next to {_DESC}; a served checkpoint needs the model's "
                                 f"config (quantize / calibrate copy it)")
        if not desc_path.is_file():
            raise ModelLoadError(f"{where}: no {_DESC} (only the AscendV1 single-description layout is marked)")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            desc = json.loads(desc_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{where}: config.json or {_DESC} is not valid JSON ({e})") from None
        if not isinstance(cfg, dict) or not isinstance(desc, dict):
            raise ModelLoadError(f"{where}: config.json and {_DESC} must be JSON objects")
        old = cfg.get("quantization_config")
        if isinstance(old, dict) and old.get("quant_method") not in (None, SERVING_METHOD):
            raise ModelLoadError(f"{cfg_path}: already has quantization_config with quant_method="
                                 f"{old.get('quant_method')!r}; refusing to overwrite it")
        qc = {"quant_method": SERVING_METHOD, "is_checkpoint_serialized": True, "format": "ascendv1",
              "description_file": _DESC,
              "model_quant_type": desc.get("model_quant_type"), "version": desc.get("version")}
        if inline_description:
            qc["description"] = desc
        cfg["quantization_config"] = qc
        tmp = cfg_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        tmp.replace(cfg_path)
        out.append(cfg_path)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m omni_npu_quant.integrations.vllm.layout QUANTIZED_DIR", file=sys.stderr)
        return 2
    from ...models.loading import ModelLoadError

    try:
        for p in mark_for_serving(argv[0]):
            print(f"marked {p}")
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
