"""``omni-npu-quant inspect DIR|FILE [--json]``: validate and describe an msModelSlim / omni_npu_quant checkpoint,
or a nunchaku SVDQuant safetensors file (or a directory without a quant description holding one).

Prints one row per quantized layer (label -> scheme, stored dtypes and shapes, bytes, the backend and mode
this machine would use; nunchaku: scheme, precision, group, rank, K -> N), totals against bf16, and every
validation problem.  Exit code 1 on any error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_arguments", "run", "describe", "describe_nunchaku"]


def add_arguments(parser) -> None:
    parser.add_argument("path", metavar="DIR|FILE",
                        help="checkpoint directory (quant_model_description*.json + safetensors), or a nunchaku "
                             "SVDQuant .safetensors file (or a directory holding one)")
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


def _error(path, message: str, file: str | None = None) -> dict:
    return {"path": str(path), "valid": False,
            "problems": [{"severity": "error", "file": str(file or path), "tensor": "", "message": message}]}


def describe(path) -> dict:
    import os

    from ..checkpoint import load_checkpoint, validate_checkpoint
    from ..checkpoint.nunchaku import NOT_A_CHECKPOINT, NunchakuError, detect_nunchaku

    try:
        nf = detect_nunchaku(path)
    except NunchakuError as e:
        return _error(path, str(e))
    if nf is not None:
        return describe_nunchaku(path, nf)
    if os.path.isfile(path):
        return _error(path, f"a file, {NOT_A_CHECKPOINT}")
    problems = validate_checkpoint(path)
    errors = [p for p in problems if p.severity == "error"]
    out: dict = {"path": str(path), "valid": not errors,
                 "problems": [{"severity": p.severity, "file": p.file, "tensor": p.tensor, "message": p.message}
                              for p in problems]}
    for p in out["problems"]:
        if p["message"].startswith("no quant_model_description"):  # and no nunchaku file either (detected above)
            p["message"] += f": {NOT_A_CHECKPOINT}"
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


def describe_nunchaku(path, nf) -> dict:
    """The ``describe`` of a nunchaku file (``nf``: ``checkpoint.nunchaku.detect_nunchaku(path)``)."""
    from ..checkpoint.files import HeaderError, read_header
    from ..checkpoint.nunchaku import NunchakuError, load_nunchaku
    from ..schemes.svd_base import L1, L2

    fname = Path(nf.path).name
    try:
        infos, _ = read_header(Path(nf.path), fname)
        ck = load_nunchaku(nf.path)
    except HeaderError as e:
        return _error(path, f"corrupt safetensors: {e}", fname)
    except NunchakuError as e:
        return _error(path, str(e), fname)
    layers = []
    q_bytes = bf16_bytes = 0
    cache: dict[str, tuple[str, str, str]] = {}
    for prefix, (sname, ts) in ck.layers.items():
        stored = {k[len(prefix) + 1:]: i for k, i in infos.items()
                  if k.startswith(prefix + ".") and "." not in k[len(prefix) + 1:]}
        stored.pop("smooth_factor_orig", None)  # unused by nunchaku (ck.ignored)
        rank, k, n = int(ts[L1].shape[0]), int(ts[L1].shape[1]), int(ts[L2].shape[0])
        nbytes = sum(i.nbytes for i in stored.values())
        ref = n * k * 2 + (n * 2 if "bias" in ts else 0)
        if sname not in cache:
            cache[sname] = _backend_for(sname)
        be, mode, reason = cache[sname]
        nvfp4 = sname == "svdq_nvfp4"
        row = {"layer": prefix, "label": "", "scheme": sname, "precision": "nvfp4" if nvfp4 else "int4",
               "group_size": 16 if nvfp4 else 64, "rank": rank, "n": n, "k": k,
               "bias": "bias" in ts, "smooth_factor": "smooth_factor" in ts,
               "stored": {s: [i.st_dtype, list(i.shape)] for s, i in sorted(stored.items())},
               "tensors": {s: [str(t.dtype).replace("torch.", ""), list(t.shape)] for s, t in ts.items()},
               "bytes": nbytes, "bf16_bytes": ref, "backend": be, "mode": mode, "reason": reason}
        if nvfp4:
            row.update(alpha=float(ts["alpha"].reshape(())), wcscales="wcscales" in ts)
        layers.append(row)
        q_bytes += nbytes
        bf16_bytes += ref
    problems = []
    qc = nf.quantization_config()
    if qc is not None:  # nunchaku's own description of the file (merge_safetensors): must agree with the layers
        want_rank, want_group = qc.get("rank"), (qc.get("weight") or {}).get("group_size")
        for r in layers:
            for what, want, got in (("rank", want_rank, r["rank"]), ("group_size", want_group, r["group_size"])):
                if want is not None and want != got:
                    problems.append({"severity": "warning", "file": fname, "tensor": f"{r['layer']}.qweight",
                                     "message": f"quantization_config metadata says {what} {want}, the layer's "
                                                f"tensors say {got}"})
    f_bytes = sum(t.numel() * t.element_size() for t in ck.float_tensors.values())
    return {"path": str(path), "valid": True, "problems": problems, "format": "nunchaku", "file": nf.path,
            "files": ck.files, "other_files": nf.other_files, "model_class": nf.metadata.get("model_class"),
            "quantization_config": qc, "has_config": "config" in nf.metadata, "layers": layers,
            "unread_layers": dict(ck.unread), "ignored_tensors": list(ck.ignored),
            "float_tensors": len(ck.float_tensors),
            "totals": {"quantized_layer_bytes": q_bytes, "same_layers_bf16_bytes": bf16_bytes,
                       "float_tensor_bytes": f_bytes,
                       "ratio_vs_bf16": round(q_bytes / bf16_bytes, 4) if bf16_bytes else None}}


def _print_nunchaku(info: dict) -> None:
    extra = "".join(f", {k} {info[k]}" for k in ("model_class",) if info.get(k))
    print(f"{info['path']}: format nunchaku (SVDQuant), file {Path(info['file']).name}{extra}")
    if info.get("quantization_config"):
        print(f"quantization_config: {json.dumps(info['quantization_config'], sort_keys=True)}")
    rows = [("layer", "scheme", "precision", "group", "rank", "K -> N", "extras", "bytes", "backend (mode)")]
    for r in info["layers"]:
        extras = [x for x in ("bias", "smooth_factor", "wcscales") if r.get(x)]
        if "alpha" in r:
            extras.append(f"alpha={r['alpha']:.6g}")
        rows.append((r["layer"], r["scheme"], r["precision"], str(r["group_size"]), str(r["rank"]),
                     f"{r['k']} -> {r['n']}", ",".join(extras) or "-", str(r["bytes"]),
                     f"{r['backend']} ({r['mode']})"))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(row[:-1])) + "  " + row[-1])
    for p, why in info["unread_layers"].items():
        print(f"not read: {p}: {why}")
    t = info["totals"]
    print(f"totals: {len(info['layers'])} SVDQuant layers, {t['quantized_layer_bytes']} bytes stored vs "
          f"{t['same_layers_bf16_bytes']} in bf16 (ratio {t['ratio_vs_bf16']}); {len(info['unread_layers'])} layers "
          f"not read; {info['float_tensors']} float tensors, {t['float_tensor_bytes']} bytes")
    seen = {}
    for r in info["layers"]:
        seen.setdefault(r["scheme"], r)
    for sname, r in seen.items():
        print(f"kernel for {sname}: {r['backend']} ({r['mode']}): {r['reason']}")


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
    if info.get("format") == "nunchaku":
        _print_nunchaku(info)
    elif "layers" in info:
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
