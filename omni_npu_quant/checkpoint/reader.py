"""Read and strictly validate msModelSlim checkpoints (AscendV1, MindIE-SD, legacy V0).

``load_checkpoint(path)`` returns a ``QuantizedCheckpoint`` whose ``layers`` map a Linear prefix
to its label, our scheme name and the stored tensors (verbatim: nothing is recomputed);
``validate_checkpoint(path)`` returns every ``Problem`` without raising.  Rules are listed in
docs/checkpoints.md; each problem names the file, the tensor and what was expected.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..schemes.base import SchemeValidationError
from ..schemes.registry import LABEL_TO_SCHEME, get_scheme
from .files import HeaderError, TensorInfo, read_header, resolve_inside
from .format import (DESC_RE, DESC_V1, FUSED_GROUPS, GLOBAL_KEYS, INDEX_RE, LINEAR_SUFFIXES, WEIGHT_RE,
                     model_quant_type, natural_key)

__all__ = ["Problem", "CheckpointError", "LayerEntry", "QuantizedCheckpoint", "load_checkpoint", "validate_checkpoint"]


@dataclass(frozen=True)
class Problem:
    """One validation finding.  ``severity`` is "error" (refuses the load) or "warning"."""

    file: str
    tensor: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file + (f" [{self.tensor}]" if self.tensor else "")
        return f"{self.severity}: {where}: {self.message}"


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; ``problems`` holds every error found."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass
class LayerEntry:
    label: str
    scheme_name: str
    tensors: dict[str, torch.Tensor]
    k: int
    keys: dict[str, str] = field(default_factory=dict)  # suffix -> stored key
    files: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return int(self.tensors["weight"].shape[0])

    def scheme(self, **options):
        return get_scheme(self.scheme_name, **options)


@dataclass
class QuantizedCheckpoint:
    path: str
    format: str  # "ascendv1" | "mindie" | "v0"
    description: dict
    layers: dict[str, LayerEntry]
    float_tensors: dict[str, torch.Tensor]
    files: list[str]
    optional_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def model_quant_type(self) -> str:
        return str(self.description.get("model_quant_type", ""))


# ------------------------------------------------------------------------------------------------
def load_checkpoint(path, *, validate: bool = True) -> QuantizedCheckpoint:
    """Load an msModelSlim checkpoint directory.  Raises ``CheckpointError`` listing every error.

    With ``validate=False`` only problems that make reading impossible raise; tensor-set checks
    (names, dtypes, shapes, values, fused siblings) are skipped.
    A GPTQ / AutoRound directory (``quantization_config`` in config.json) is read by ``checkpoint/gptq.py``.
    """
    if _gptq_dir(path):
        from .gptq import load_gptq_checkpoint

        return load_gptq_checkpoint(path, validate=validate)
    scan = _Scan(Path(path), load=True, strict=validate)
    scan.run()
    errors = [p for p in scan.problems if p.severity == "error"]
    if errors:
        head = "\n  ".join(str(p) for p in errors[:25])
        more = f"\n  ... and {len(errors) - 25} more" if len(errors) > 25 else ""
        raise CheckpointError(f"checkpoint {path} is not loadable ({len(errors)} error(s)):\n  {head}{more}", errors)
    return scan.result()


def validate_checkpoint(path) -> list[Problem]:
    """Every problem of a checkpoint directory (errors and warnings); never raises on bad data."""
    if _gptq_dir(path):
        from .gptq import validate_gptq_checkpoint

        return validate_gptq_checkpoint(path)
    scan = _Scan(Path(path), load=True, strict=True)
    try:
        scan.run()
    except Exception as e:  # defensive: report, never raise on bad data
        scan.err(str(path), "", f"unexpected failure while validating: {type(e).__name__}: {e}")
    return scan.problems


def _gptq_dir(path) -> bool:
    """A GPTQ / AutoRound checkpoint (not msModelSlim): ``checkpoint/gptq.py`` reads it."""
    from .gptq import GptqConfigError, find_gptq_config

    try:
        return find_gptq_config(path) is not None
    except GptqConfigError:
        return True  # detected, but ambiguous: its reader reports why
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
class _Fatal(Exception):
    pass


class _Scan:
    def __init__(self, root: Path, *, load: bool, strict: bool, keep: bool = True):
        self.root, self.load, self.strict, self.keep = root, load, strict, keep
        self.problems: list[Problem] = []
        self.fmt = "ascendv1"
        self.desc: dict = {}
        self.desc_name = ""
        self.infos: dict[str, TensorInfo] = {}
        self.files: list[str] = []
        self.labels: dict[str, str] = {}
        self.layers: dict[str, LayerEntry] = {}
        self.floats: dict[str, torch.Tensor] = {}
        self.optional: dict[str, torch.Tensor] = {}
        self._handles: dict[str, object] = {}

    # ---- problems ----
    def err(self, file, tensor, msg, severity="error"):
        self.problems.append(Problem(str(file), tensor, msg, severity))

    def warn(self, file, tensor, msg):
        self.err(file, tensor, msg, "warning")

    # ---- driver ----
    def run(self):
        try:
            self._discover()
            self._read_headers()
            self._check_labels_vs_files()
            self._classify()
            if self.strict:
                self._check_fused()
            self._load_optional()
        except _Fatal:
            pass

    def result(self) -> QuantizedCheckpoint:
        return QuantizedCheckpoint(str(self.root), self.fmt, self.desc, self.layers, self.floats, self.files,
                                   self.optional, [p for p in self.problems if p.severity == "warning"])

    # ---- 1. files ----
    def _discover(self):
        root = self.root
        if not root.is_dir():
            self.err(root, "", "not a directory (expected an msModelSlim output directory)")
            raise _Fatal
        names = sorted(os.listdir(root))
        descs = [n for n in names if DESC_RE.match(n)]
        if not descs:
            self.err(root, "", "no quant_model_description.json (AscendV1) or quant_model_description_{type}.json "
                               "(MindIE-SD / V0) found")
            raise _Fatal
        if len(descs) > 1:
            self.err(root, "", f"ambiguous checkpoint: several description files {descs}; keep exactly one")
            raise _Fatal
        self.desc_name = descs[0]
        self.fmt = "ascendv1" if self.desc_name == DESC_V1 else "mindie"  # mindie vs v0 decided in _classify
        try:
            dpath = resolve_inside(root, self.desc_name)
            self.desc = json.loads(dpath.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            self.err(self.desc_name, "", f"cannot read the description JSON: {e}")
            raise _Fatal
        if not isinstance(self.desc, dict):
            self.err(self.desc_name, "", "description must be a JSON object {tensor key: label, ...}")
            raise _Fatal

        indexes = [n for n in names if INDEX_RE.match(n)]
        weights = [n for n in names if WEIGHT_RE.match(n)]
        if len(indexes) > 1:
            self.err(root, "", f"ambiguous checkpoint: several index files {indexes}")
            raise _Fatal
        self.index_name = indexes[0] if indexes else None
        self.weight_map: dict[str, str] | None = None
        if self.index_name:
            try:
                idx = json.loads(resolve_inside(root, self.index_name).read_text(encoding="utf-8"))
                wm = idx["weight_map"]
                if not isinstance(wm, dict):
                    raise TypeError("weight_map is not an object")
            except (ValueError, OSError, KeyError, TypeError) as e:
                self.err(self.index_name, "", f"invalid index JSON (expected {{'metadata': {{'total_size': int}}, "
                                              f"'weight_map': {{key: file}}}}): {e}")
                raise _Fatal
            self.weight_map = wm
            self.index_total = (idx.get("metadata") or {}).get("total_size")
            files = []
            for key, f in wm.items():
                try:
                    resolve_inside(root, f)
                except ValueError as e:
                    self.err(self.index_name, key, f"index entry points outside the checkpoint: {e}")
                    continue
                if f not in files:
                    files.append(f)
            stray = [w for w in weights if w not in files]
            for w in stray:
                self.err(w, "", f"weight file not referenced by {self.index_name}; remove it or add it to the index")
            self.files = sorted(files, key=natural_key)
        else:
            if not weights:
                self.err(root, "", "no quant_model_weight*.safetensors file found")
                raise _Fatal
            if len(weights) > 1:
                self.err(root, "", f"ambiguous checkpoint: several weight files {weights} and no index JSON")
                raise _Fatal
            self.files = weights
        for f in self.files:
            try:
                p = resolve_inside(root, f)
            except ValueError as e:
                self.err(f, "", str(e))
                continue
            if not p.is_file():
                self.err(f, "", "weight file is missing")

    # ---- 2. headers ----
    def _read_headers(self):
        fatal = False
        for f in self.files:
            try:
                p = resolve_inside(self.root, f)
                if not p.is_file():
                    fatal = True
                    continue
                infos, meta = read_header(p, f)
            except HeaderError as e:
                self.err(f, e.tensor, f"corrupt safetensors: {e}")
                fatal = True
                continue
            except (ValueError, OSError) as e:
                self.err(f, "", f"cannot read: {e}")
                fatal = True
                continue
            if meta:
                self.warn(f, "__metadata__", "msModelSlim writes no safetensors metadata; ignored")
            for key, info in infos.items():
                if key in self.infos:
                    self.err(f, key, f"tensor stored twice (also in {self.infos[key].file})")
                    continue
                if self.weight_map is not None:
                    want = self.weight_map.get(key)
                    if want is None:
                        self.err(f, key, f"tensor is in the file but not in {self.index_name}")
                    elif want != f:
                        self.err(f, key, f"{self.index_name} says this tensor is in {want}")
                self.infos[key] = info
        if self.weight_map is not None:
            for key, f in self.weight_map.items():
                if key not in self.infos and not fatal:
                    self.err(f, key, f"listed in {self.index_name} but not stored in {f}")
            total = sum(i.nbytes for i in self.infos.values())
            if isinstance(self.index_total, int) and self.index_total != total and not fatal:
                self.warn(self.index_name, "metadata.total_size",
                          f"total_size {self.index_total} differs from the stored tensors' {total} bytes")
        if fatal:
            raise _Fatal

    # ---- 3. description vs files ----
    def _check_labels_vs_files(self):
        dn = self.desc_name
        for key, val in self.desc.items():
            if key in GLOBAL_KEYS:
                continue
            if key.endswith(".quant_type"):  # FA3 per-attention entry, not a tensor
                self.err(dn, key, f"FA3 attention quantization ({key}: {val!r}) is not served by omni_npu_quant; "
                                  "re-quantize without fa3_quant")
                continue
            if not isinstance(val, str):
                self.err(dn, key, f"label must be a string, got {type(val).__name__}")
                continue
            self.labels[key] = val
            if key not in self.infos:
                self.err(dn, key, f"labelled {val} in the description but stored in no weight file")
        for key, info in self.infos.items():
            if key not in self.labels and not key.endswith(".quant_type"):
                self.err(info.file, key, f"stored tensor has no label in {dn}")
        md = self.desc.get("metadata") or {}
        if isinstance(md, dict) and md.get("quarot"):
            self.err(dn, "metadata.quarot", "online QuaRot head rotations are not served by omni_npu_quant; "
                                            "use offline QuaRot (online: false)")
        mqt = self.desc.get("model_quant_type")
        want = model_quant_type(self.labels.values())
        if mqt is not None and mqt != want:
            self.warn(dn, "model_quant_type", f"summary says {mqt!r}, per-tensor labels give {want!r}; "
                                              "per-tensor labels are used")

    # ---- 4. layers ----
    def _classify(self):
        labels = self.labels
        groups: dict[str, dict[str, str]] = {}  # prefix -> suffix -> key
        quant_keys = [k for k, lab in labels.items() if lab != "FLOAT" and k in self.infos]
        wrapped: set[str] = set()
        for key in quant_keys:
            prefix, _, suffix = key.rpartition(".")
            if prefix.endswith(".linear") and (prefix[:-7] + ".div.mul_scale") in labels:
                wrapped.add(prefix[:-7])
                prefix = prefix[:-7]
            groups.setdefault(prefix, {})[suffix] = key
        # online rotations
        for key in labels:
            if key.endswith((".heads_rotation", ".kronecker_rotation_m", ".kronecker_rotation_n")):
                self.err(self.infos[key].file if key in self.infos else self.desc_name, key,
                         "online QuaRot rotation matrices are not served by omni_npu_quant")
        # attach FLOAT biases / mul_scale to quantized layers
        attached: set[str] = set()
        for prefix, sufs in groups.items():
            base = prefix + ".linear" if prefix in wrapped else prefix
            if "bias" not in sufs and labels.get(base + ".bias") == "FLOAT":
                sufs["bias"] = base + ".bias"
                attached.add(base + ".bias")
            ms = prefix + ".div.mul_scale"
            if ms in labels:
                sufs["mul_scale"] = ms
                attached.add(ms)
        # float wrappers (smoothing on an unquantized Linear) cannot be served as plain tensors
        for key, lab in labels.items():
            if key.endswith(".div.mul_scale") and key not in attached:
                self.err(self._file(key), key, "non-fusion smooth wrapper on an unquantized Linear "
                                               f"({key[:-14]}.linear.weight is FLOAT) is not supported")
                attached.add(key)
        # refuse labels we do not serve
        unserved: dict[str, list[str]] = {}
        for prefix, sufs in groups.items():
            labs = {labels[k] for s, k in sufs.items() if s not in ("bias", "mul_scale")}
            if len(labs) > 1:
                self.err(self._file(sufs.get("weight", next(iter(sufs.values())))), prefix,
                         f"tensors of one layer carry different labels {sorted(labs)}")
                continue
            lab = labs.pop()
            if lab not in LABEL_TO_SCHEME:
                unserved.setdefault(lab, []).append(prefix)
        for lab, prefixes in unserved.items():
            shown = ", ".join(prefixes[:6]) + (f", ... ({len(prefixes)} layers)" if len(prefixes) > 6 else "")
            self.err(self.desc_name, prefixes[0], f"label {lab} is not served by omni_npu_quant "
                                                  f"(served: {sorted(LABEL_TO_SCHEME)}); layers: {shown}")
        v0_hint = False
        for prefix in sorted(groups, key=natural_key):
            sufs = groups[prefix]
            labs = {labels[k] for s, k in sufs.items() if s not in ("bias", "mul_scale")}
            if len(labs) != 1:
                continue
            lab = next(iter(labs))
            if lab not in LABEL_TO_SCHEME:
                continue
            if set(sufs) <= {"weight", "bias"} and self.infos[sufs.get("weight", sufs.get("bias"))].dtype in (
                    torch.float16, torch.bfloat16, torch.float32):
                # V0 anti-outlier m2 '<norm>.module.weight/.bias' carry the quant label but are float
                for k in sufs.values():
                    self.warn(self._file(k), k, f"float tensor labelled {lab} (V0 anti-outlier norm); kept as float")
                    self._load_float(k)
                    attached.add(k)
                v0_hint = True
                continue
            bad = [s for s in sufs if s not in LINEAR_SUFFIXES and s != "mul_scale"]
            for s in bad:
                self.err(self._file(sufs[s]), sufs[s], f"unexpected tensor suffix '{s}' for label {lab}")
            scheme_name = LABEL_TO_SCHEME[lab]
            # bias of a dual-scale layer carries the quant label; others FLOAT
            bkey = sufs.get("bias")
            if bkey is not None and self.strict:
                blab = labels[bkey]
                want = lab if lab == "W4A4_MXFP4_DUALSCALE" else "FLOAT"
                if blab not in (want, "FLOAT", lab):
                    self.err(self._file(bkey), bkey, f"bias labelled {blab}, expected {want}")
            if lab == "W8A8" and ("weight_scale" in sufs):
                v0_hint = True
            isc = sufs.get("input_scale")
            if isc is not None and self.infos[isc].dtype != torch.float32:
                v0_hint = True
            tensors = {s: self._tensor(k) for s, k in sufs.items()} if self.load else {}
            entry = LayerEntry(lab, scheme_name, tensors, 0, dict(sufs),
                               tuple(sorted({self.infos[k].file for k in sufs.values()})))
            entry.k = self._infer_k(scheme_name, sufs)
            if self.strict and self.load:
                try:
                    get_scheme(scheme_name).validate(tensors, k=entry.k, where=prefix)
                except SchemeValidationError as e:
                    self.err(self._file(sufs.get("weight", next(iter(sufs.values())))), prefix,
                             f"{e} (label {lab} -> scheme {scheme_name})")
            if self.keep:
                self.layers[prefix] = entry
        for key, lab in labels.items():
            if key in attached or key not in self.infos:
                continue
            if lab == "FLOAT":
                if key.rpartition(".")[0] in wrapped or key.rpartition(".")[0][:-7] in wrapped:
                    continue
                self._load_float(key)
        if self.fmt == "mindie" and (v0_hint or "kv_cache_type" in self.desc):
            self.fmt = "v0"

    def _infer_k(self, scheme_name, sufs) -> int:
        w = self.infos[sufs["weight"]] if "weight" in sufs else None
        if w is None or len(w.shape) != 2:
            return 0
        k = get_scheme(scheme_name).k_from_weight_cols(int(w.shape[1]))
        if k != int(w.shape[1]):  # packed: an odd K is only known from a (K,) tensor
            ms = sufs.get("mul_scale")
            if ms is not None and len(self.infos[ms].shape) == 1:
                return int(self.infos[ms].shape[0])
        return k

    def _file(self, key) -> str:
        info = self.infos.get(key)
        return info.file if info else self.desc_name

    def _tensor(self, key) -> torch.Tensor:
        from safetensors import safe_open

        info = self.infos[key]
        h = self._handles.get(info.file)
        if h is None:
            h = safe_open(str(resolve_inside(self.root, info.file)), framework="pt", device="cpu")
            self._handles[info.file] = h
        return h.get_tensor(key)

    def _load_float(self, key):
        if self.load and self.keep:
            self.floats[key] = self._tensor(key)

    # ---- 5. fused siblings ----
    def _check_fused(self):
        by_parent: dict[tuple[str, tuple], dict[str, str]] = {}
        linear_labels: dict[str, str] = {p: e.label for p, e in self.layers.items()} if self.keep else {}
        if not self.keep:  # validation-only scan keeps no layers; rebuild labels from keys
            for key, lab in self.labels.items():
                if key.endswith(".weight") and lab != "FLOAT":
                    p = key[:-7]
                    linear_labels[p[:-7] if p.endswith(".linear") else p] = lab
        for key, lab in self.labels.items():
            if key.endswith(".weight") and lab == "FLOAT":
                p = key[:-7]
                p = p[:-7] if p.endswith(".linear") else p
                linear_labels.setdefault(p, "FLOAT")
        for prefix, lab in linear_labels.items():
            parent, _, leaf = prefix.rpartition(".")
            for grp in FUSED_GROUPS:
                if leaf in grp:
                    by_parent.setdefault((parent, grp), {})[leaf] = prefix
        for (parent, grp), members in by_parent.items():
            labs = {m: linear_labels[p] for m, p in members.items()}
            if len(set(labs.values())) > 1 and any(v != "FLOAT" for v in labs.values()):
                self.err(self._file(next(iter(members.values())) + ".weight"), parent + "." + "/".join(grp),
                         f"fused siblings carry different labels {labs}: every shard of a fused module must be "
                         "quantized the same way")
                continue
            if not self.keep:
                continue
            ents = [self.layers[p] for p in members.values() if p in self.layers]
            for suf in ("input_scale", "input_offset", "mul_scale"):
                vals = [(e, e.tensors.get(suf)) for e in ents]
                vals = [(e, v) for e, v in vals if v is not None]
                if len(vals) < 2:
                    continue
                ref = vals[0][1]
                for e, v in vals[1:]:
                    if v.shape != ref.shape or not torch.equal(v.float(), ref.float()):
                        self.err(self._file(e.keys[suf]), e.keys[suf],
                                 f"fused siblings under {parent} must share '{suf}' (one input); differs from "
                                 f"{vals[0][0].keys[suf]}")
                        break

    # ---- 6. optional/ (offline QuaRot extra info) ----
    def _load_optional(self):
        opt = self.desc.get("optional") or {}
        if not isinstance(opt, dict):
            self.err(self.desc_name, "optional", "must be an object")
            return
        for scope, info in opt.items():
            rmap = (info or {}).get("rotation_map", {}) if isinstance(info, dict) else {}
            if not rmap:
                self.err(self.desc_name, f"optional.{scope}", f"unknown optional section {scope!r}; not supported")
                continue
            for name, rel in rmap.items():
                try:
                    p = resolve_inside(self.root, rel)
                    infos, _ = read_header(p, rel)
                except (ValueError, OSError) as e:
                    self.err(rel, name, f"optional tensor file unreadable: {e}")
                    continue
                if name not in infos:
                    self.err(rel, name, f"optional.{scope}.rotation_map names {name!r} but the file lacks it")
                    continue
                if self.load and self.keep:
                    from safetensors import safe_open

                    with safe_open(str(p), framework="pt", device="cpu") as h:
                        self.optional[f"{scope}.{name}"] = h.get_tensor(name)
