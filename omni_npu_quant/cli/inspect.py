"""``omni-npu-quant inspect DIR [--json]``: validate and describe an msModelSlim / omni_npu_quant checkpoint.

Prints one row per quantized layer (label -> scheme, stored dtypes and shapes, bytes, the backend and mode
this machine would use), totals against bf16, and every validation problem.  Exit code 1 on any error.
"""
from __future__ import annotations

import json
import sys

__all__ = ["add_arguments", "run", "describe"]


def add_arguments(parser) -> None:
    parser.add_argument("path", metavar="DIR", help="checkpoint directory (quant_model_description*.json + safetensors)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _backend_for(scheme_name: str) -> tuple[str, str, str]:
    from ..backends.registry import select_backend
    from ..schemes.registry import get_scheme

    try:
        be, cap = select_backend(get_scheme(scheme_name))
        why = cap.reason + "".join(f"; refused {k}: {w}" for k, w in cap.refusals if cap.mode != "exact fallback")
        return f"{be.name}/{cap.kernel}", cap.mode, why
    except Exception as e:  # a refusal is information, not a crash
        return "none", "unsupported", str(e).splitlines()[0]


def describe(path) -> dict:
    from ..checkpoint import load_checkpoint, validate_checkpoint

    problems = validate_checkpoint(path)
    errors = [p for p in problems if p.severity == "error"]
    out: dict = {"path": str(path), "valid": not errors,
                 "problems": [{"severity": p.severity, "file": p.file, "tensor": p.tensor, "message": p.message}
                              for p in problems]}
    if errors:
        return out
    ck = load_checkpoint(path)
    layers = []
    q_bytes = f_bytes = bf16_bytes = 0
    cache: dict[str, tuple[str, str, str]] = {}
    for prefix, e in ck.layers.items():
        nbytes = sum(t.numel() * t.element_size() for t in e.tensors.values())
        ref = e.n * e.k * 2 + (e.n * 2 if "bias" in e.tensors else 0)
        if e.scheme_name not in cache:
            cache[e.scheme_name] = _backend_for(e.scheme_name)
        be, mode, reason = cache[e.scheme_name]
        layers.append({"layer": prefix, "label": e.label, "scheme": e.scheme_name, "n": e.n, "k": e.k,
                       "tensors": {s: [str(t.dtype).replace("torch.", ""), list(t.shape)] for s, t in e.tensors.items()},
                       "bytes": nbytes, "bf16_bytes": ref, "backend": be, "mode": mode, "reason": reason})
        q_bytes += nbytes
        bf16_bytes += ref
    for t in ck.float_tensors.values():
        f_bytes += t.numel() * t.element_size()
    out.update({"format": ck.format, "model_quant_type": ck.model_quant_type, "files": ck.files, "layers": layers,
                "float_tensors": len(ck.float_tensors), "optional_tensors": sorted(ck.optional_tensors),
                "totals": {"quantized_layer_bytes": q_bytes, "same_layers_bf16_bytes": bf16_bytes,
                           "float_tensor_bytes": f_bytes,
                           "ratio_vs_bf16": round(q_bytes / bf16_bytes, 4) if bf16_bytes else None}})
    return out


def run(args) -> int:
    from ..backends.registry import backend_override
    from ..models.loading import pipeline_layout

    try:
        backend_override()  # a bad OMNI_NPU_QUANT_BACKEND is an error here, not "every layer unsupported"
    except ValueError as e:
        print(f"omni-npu-quant inspect: {e}", file=sys.stderr)
        return 2

    layout = pipeline_layout(args.path)
    if layout:  # the pipeline layout of quantize / calibrate (docs/diffusion.md): one checkpoint per transformer
        if args.json:
            infos = {sub: describe(p) for sub, p in layout.items()}
            print(json.dumps({"path": str(args.path), "layout": "pipeline", "transformers": infos}, indent=2))
            return 0 if all(i["valid"] for i in infos.values()) else 1
        rc = 0
        for sub, p in layout.items():
            print(f"== {sub}")
            rc = max(rc, run(type(args)(**{**vars(args), "path": str(p)})))
        return rc
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if info["valid"] else 1
    if "layers" in info:
        print(f"{info['path']}: format {info['format']}, model_quant_type {info['model_quant_type']}, "
              f"files {', '.join(info['files'])}")
        rows = [("layer", "label -> scheme", "tensors", "bytes", "backend (mode)")]
        for r in info["layers"]:
            ts = " ".join(f"{s}:{d}{shape}" for s, (d, shape) in r["tensors"].items())
            rows.append((r["layer"], f"{r['label']} -> {r['scheme']}", ts, str(r["bytes"]), f"{r['backend']} ({r['mode']})"))
        w = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w[i]) for i, c in enumerate(row[:4])) + "  " + row[4])
        t = info["totals"]
        print(f"totals: {len(info['layers'])} quantized layers, {t['quantized_layer_bytes']} bytes vs "
              f"{t['same_layers_bf16_bytes']} in bf16 (ratio {t['ratio_vs_bf16']}); "
              f"{info['float_tensors']} float tensors, {t['float_tensor_bytes']} bytes")
        seen = {}
        for r in info["layers"]:
            seen.setdefault(r["scheme"], r)
        for sname, r in seen.items():
            print(f"kernel for {sname}: {r['backend']} ({r['mode']}): {r['reason']}")
    for p in info["problems"]:
        print(f"{p['severity']}: {p['file']}" + (f" [{p['tensor']}]" if p["tensor"] else "") + f": {p['message']}")
    print("validation: OK" if info["valid"] else
          f"validation: FAILED ({sum(p['severity'] == 'error' for p in info['problems'])} error(s))")
    return 0 if info["valid"] else 1
