"""Read and strictly validate msModelSlim checkpoints (AscendV1, MindIE-SD, legacy V0).

``load_checkpoint(path)`` returns a ``QuantizedCheckpoint`` whose ``layers`` map a Linear prefix
to its label, our scheme name and the stored tensors (verbatim: nothing is recomputed);
``validate_checkpoint(path)`` returns every ``Problem`` without raising.  Rules are listed in
docs/checkpoints.md; each problem names the file, the tensor and what was expected.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..schemes.base import SchemeValidationError
from ..schemes.registry import LABEL_TO_SCHEME, get_scheme
from .files import HeaderError, TensorInfo, load_json, read_header, read_regular, resolve_inside
from .format import DESC_RE, DESC_V1, INDEX_RE, WEIGHT_RE, model_quant_type, natural_key
from .layout import (FA3_SUFFIX, FLOAT_LABEL, GLOBAL_KEYS, LINEAR_SUFFIXES, MUL_SCALE,
                     ONLINE_ROTATION_SUFFIXES, SHARED_INPUT_GROUPS_KEY, SHARED_INPUT_TENSORS, bias_label, linear_base,
                     mul_scale_key, packed_groups, parse_shared_input_groups, split_tensor_key,
                     wrapped_prefix_of_mul_scale)

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
    """A checkpoint cannot be loaded (or written); ``problems`` holds every error found.

    The one exception type ``load_checkpoint`` raises for bad data, and the writer for bad input, a
    concurrent run, a full disk or a permission problem (``OutputLockedError`` is a subclass)."""

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


# global description keys and the JSON types msModelSlim writes for them
_GLOBAL_TYPES = {"model_quant_type": (str,), "version": (str,), "group_size": (int,), "metadata": (dict,),
                 "optional": (dict,), "kv_cache_type": (str, type(None)), "kv_quant_type": (str, type(None)),
                 "fa_quant_type": (str, type(None)), "reduce_quant_type": (str, type(None)),
                 "indexer_quant_type": (str, type(None)), SHARED_INPUT_GROUPS_KEY: (list,)}
_TENSOR_IN_MSG = re.compile(r"tensor '(\w+)'")


class _Scan:
    def __init__(self, root: Path, *, load: bool, strict: bool):
        self.root, self.load, self.strict = root, load, strict
        self.problems: list[Problem] = []
        self.fmt = "ascendv1"
        self.desc: dict = {}
        self.desc_name = ""
        self.index_name: str | None = None
        self.index_total = None
        self.weight_map: dict[str, str] | None = None
        self.infos: dict[str, TensorInfo] = {}
        self.files: list[str] = []
        self.labels: dict[str, str] = {}
        self.layers: dict[str, LayerEntry] = {}
        self.floats: dict[str, torch.Tensor] = {}
        self.optional: dict[str, torch.Tensor] = {}
        self.shared_groups: list[list[str]] | None = None
        self._handles: dict[str, object] = {}

    # ---- problems ----
    def err(self, file, tensor, msg, severity="error"):
        self.problems.append(Problem(str(file), str(tensor), msg, severity))

    def warn(self, file, tensor, msg):
        self.err(file, tensor, msg, "warning")

    # ---- driver ----
    def run(self):
        try:
            self._discover()
            self._read_headers()
            self._check_globals()
            self._check_labels_vs_files()
            self._classify()
            if self.strict:
                self._check_shared_inputs()
            self._load_optional()
        except _Fatal:
            pass

    def result(self) -> QuantizedCheckpoint:
        return QuantizedCheckpoint(str(self.root), self.fmt, self.desc, self.layers, self.floats, self.files,
                                   self.optional, [p for p in self.problems if p.severity == "warning"])

    def _json(self, name: str, what: str):
        """Strict JSON of a regular file inside the checkpoint; records an error and raises _Fatal otherwise."""
        try:
            return load_json(read_regular(resolve_inside(self.root, name)))
        except (ValueError, OSError) as e:
            self.err(name, "", f"cannot read the {what}: {e}")
            raise _Fatal from None

    # ---- 1. files ----
    def _discover(self):
        root = self.root
        if not root.is_dir():
            self.err(root, "", "not a directory (expected an msModelSlim output directory)")
            raise _Fatal
        try:
            names = sorted(os.listdir(root))
        except OSError as e:
            self.err(root, "", f"cannot list the directory: {e.strerror or e}")
            raise _Fatal from None
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
        self.desc = self._json(self.desc_name, "description JSON")
        if not isinstance(self.desc, dict):
            self.err(self.desc_name, "", "description must be a JSON object {tensor key: label, ...}")
            raise _Fatal

        indexes = [n for n in names if INDEX_RE.match(n)]
        weights = [n for n in names if WEIGHT_RE.match(n)]
        if len(indexes) > 1:
            self.err(root, "", f"ambiguous checkpoint: several index files {indexes}")
            raise _Fatal
        self.index_name = indexes[0] if indexes else None
        if self.index_name:
            idx = self._json(self.index_name, "index JSON")
            shape = ("expected {'metadata': {'total_size': int}, 'weight_map': {tensor key: file name}}")
            wm = idx.get("weight_map") if isinstance(idx, dict) else None
            if not isinstance(wm, dict):
                self.err(self.index_name, "weight_map", f"invalid index JSON: no 'weight_map' object ({shape})")
                raise _Fatal
            md = idx.get("metadata", {})
            if md is None:
                md = {}
            if not isinstance(md, dict):
                self.err(self.index_name, "metadata", f"invalid index JSON: 'metadata' is a {type(md).__name__} "
                                                      f"({shape})")
                raise _Fatal
            total = md.get("total_size")
            if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
                self.err(self.index_name, "metadata.total_size", f"must be an integer, got {total!r}")
                raise _Fatal
            self.index_total = total
            files = []
            bad = False
            for key, f in wm.items():
                if not isinstance(f, str):
                    self.err(self.index_name, key, f"weight_map value must be a file name string, got {f!r}")
                    bad = True
                    continue
                try:
                    resolve_inside(root, f)
                except ValueError as e:
                    self.err(self.index_name, key, f"index entry points outside the checkpoint: {e}")
                    bad = True
                    continue
                if f not in files:
                    files.append(f)
            if bad:
                raise _Fatal
            self.weight_map = wm
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
            p = resolve_inside(root, f)
            if not p.is_file():
                self.err(f, "", "weight file is missing (or not a regular file)")

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
    def _check_globals(self):
        dn = self.desc_name
        for key, types in _GLOBAL_TYPES.items():
            if key not in self.desc:
                continue
            v = self.desc[key]
            if isinstance(v, bool) or not isinstance(v, types):
                want = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer",
                                                                  "dict": "an object", "list": "a list"}[t.__name__]
                                   for t in types)
                self.err(dn, key, f"global key '{key}' must be {want}, got {type(v).__name__} {v!r:.80}")
        grp = self.desc.get(SHARED_INPUT_GROUPS_KEY)
        if isinstance(grp, list):
            try:
                self.shared_groups = parse_shared_input_groups(grp)
            except ValueError as e:
                self.err(dn, SHARED_INPUT_GROUPS_KEY, str(e))

    def _check_labels_vs_files(self):
        dn = self.desc_name
        for key, val in self.desc.items():
            if key in GLOBAL_KEYS:
                continue
            if key.endswith(FA3_SUFFIX):  # FA3 per-attention entry, not a tensor
                self.err(dn, key, f"FA3 attention quantization ({key}: {val!r:.80}) is not served by omni_npu_quant; "
                                  "re-quantize without fa3_quant")
                continue
            if not isinstance(val, str):
                self.err(dn, key, f"label must be a string, got {type(val).__name__}")
                continue
            self.labels[key] = val
            if key not in self.infos:
                self.err(dn, key, f"labelled {val} in the description but stored in no weight file")
        for key, info in self.infos.items():
            if key not in self.labels and not key.endswith(FA3_SUFFIX):
                self.err(info.file, key, f"stored tensor has no label in {dn}")
        md = self.desc.get("metadata") or {}
        if isinstance(md, dict) and md.get("quarot"):
            self.err(dn, "metadata.quarot", "online QuaRot head rotations are not served by omni_npu_quant; "
                                            "use offline QuaRot (online: false)")
        mqt = self.desc.get("model_quant_type")
        want = model_quant_type(self.labels.values())
        if isinstance(mqt, str) and mqt != want:
            self.warn(dn, "model_quant_type", f"summary says {mqt!r}, per-tensor labels give {want!r}; "
                                              "per-tensor labels are used")

    # ---- 4. layers ----
    def _classify(self):
        labels = {k: v for k, v in self.labels.items() if k in self.infos}  # missing ones are already errors
        groups: dict[str, dict[str, str]] = {}  # prefix -> suffix -> key
        wrapped: set[str] = set()
        for key, lab in labels.items():
            if lab == FLOAT_LABEL:
                continue
            prefix, suffix, is_wrapped = split_tensor_key(key, self.labels)
            if is_wrapped:
                wrapped.add(prefix)
            groups.setdefault(prefix, {})[suffix] = key
        # online rotations
        for key in labels:
            if key.endswith(ONLINE_ROTATION_SUFFIXES):
                self.err(self._file(key), key, "online QuaRot rotation matrices are not served by omni_npu_quant")
        # attach FLOAT biases / mul_scale to quantized layers
        attached: set[str] = set()
        for prefix, sufs in groups.items():
            base = linear_base(prefix, prefix in wrapped)
            if "bias" not in sufs and labels.get(base + ".bias") == FLOAT_LABEL:
                sufs["bias"] = base + ".bias"
                attached.add(base + ".bias")
            ms = mul_scale_key(prefix)
            if ms in labels:
                sufs[MUL_SCALE] = ms
                attached.add(ms)
            elif prefix in wrapped:  # labelled but not stored: reported in _check_labels_vs_files
                self.err(self._file(sufs.get("weight", next(iter(sufs.values())))), ms,
                         f"layer {prefix} is stored as a non-fusion smooth wrapper ({base}.*) but {ms} is missing")
        # float wrappers (smoothing on an unquantized Linear) cannot be served as plain tensors
        for key, lab in labels.items():
            p = wrapped_prefix_of_mul_scale(key)
            if p is not None and key not in attached:
                self.err(self._file(key), key, "non-fusion smooth wrapper on an unquantized Linear "
                                               f"({linear_base(p, True)}.weight is FLOAT) is not supported")
                attached.add(key)
        # refuse labels we do not serve
        unserved: dict[str, list[str]] = {}
        for prefix, sufs in groups.items():
            labs = {labels[k] for s, k in sufs.items() if s not in ("bias", MUL_SCALE)}
            if not labs:  # only a bias carries a quantized label
                continue
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
            labs = {labels[k] for s, k in sufs.items() if s not in ("bias", MUL_SCALE)}
            if not labs:
                bkey = sufs.get("bias")
                if bkey is not None and labels.get(bkey, FLOAT_LABEL) != FLOAT_LABEL:
                    self.err(self._file(bkey), bkey, f"bias labelled {labels[bkey]} but the layer has no stored "
                                                     f"{linear_base(prefix, prefix in wrapped)}.weight; a quantized "
                                                     "label needs the layer's weight")
                continue
            if len(labs) != 1:
                continue
            lab = next(iter(labs))
            if lab not in LABEL_TO_SCHEME:
                continue
            if "weight" not in sufs:
                k0 = next(iter(sufs.values()))
                self.err(self._file(k0), f"{linear_base(prefix, prefix in wrapped)}.weight",
                         f"tensors {sorted(sufs.values())} are labelled {lab} but the layer's weight is not stored")
                continue
            if set(sufs) <= {"weight", "bias"} and self.infos[sufs["weight"]].dtype in (
                    torch.float16, torch.bfloat16, torch.float32):
                # V0 anti-outlier m2 '<norm>.module.weight/.bias' carry the quant label but are float
                for k in sufs.values():
                    self.warn(self._file(k), k, f"float tensor labelled {lab} (V0 anti-outlier norm); kept as float")
                    self._load_float(k)
                    attached.add(k)
                v0_hint = True
                continue
            scheme_name = LABEL_TO_SCHEME[lab]
            allowed = set(LINEAR_SUFFIXES) | self._declared(scheme_name, sufs)
            bad = [s for s in sufs if s not in allowed and s != MUL_SCALE]
            for s in bad:
                self.err(self._file(sufs[s]), sufs[s], f"unexpected tensor suffix '{s}' for label {lab}")
            for s in getattr(get_scheme(scheme_name), "float_suffixes", ()):  # FLOAT tensors a scheme stores
                fk = f"{prefix}.{s}"  # beside its weight (the SVD low-rank factors, schemes/svd_base.py)
                if labels.get(fk) == FLOAT_LABEL:
                    sufs[s] = fk
                    attached.add(fk)
            # bias of a dual-scale layer carries the quant label; others FLOAT
            bkey = sufs.get("bias")
            if bkey is not None and self.strict:
                blab = labels[bkey]
                want = bias_label(lab)
                if blab not in (want, FLOAT_LABEL, lab):
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
                try:  # names, dtypes, shapes (the scheme's K rule) and values (check_values), before any compute
                    get_scheme(scheme_name).validate(tensors, k=entry.k, where=prefix)
                except SchemeValidationError as e:
                    m = _TENSOR_IN_MSG.search(str(e))
                    key = sufs.get(m.group(1)) if m else None
                    self.err(self._file(key or sufs["weight"]), key or prefix,
                             f"{e} (label {lab} -> scheme {scheme_name})")
            self.layers[prefix] = entry
        for key, lab in labels.items():
            if key in attached:
                continue
            if lab == FLOAT_LABEL:
                prefix, _, is_wrapped = split_tensor_key(key, self.labels)
                if is_wrapped and prefix in wrapped:
                    continue
                self._load_float(key)
        if self.fmt == "mindie" and (v0_hint or "kv_cache_type" in self.desc):
            self.fmt = "v0"

    def _infer_k(self, scheme_name, sufs) -> int:
        w = self.infos[sufs["weight"]] if "weight" in sufs else None
        if w is None or len(w.shape) != 2:
            return 0
        sch = get_scheme(scheme_name)
        if sch.k_from_weight_cols(1) != 1:  # packed FP4: K = 2 x stored columns (or the mul_scale length)
            ms = sufs.get(MUL_SCALE)
            if ms is not None and len(self.infos[ms].shape) == 1:
                return int(self.infos[ms].shape[0])
        return sch.k_from_weight_cols(int(w.shape[1]))

    def _declared(self, scheme_name, sufs) -> set[str]:
        """The tensor names the scheme declares for this layer's (N, K) (e.g. W4A16 input_perm)."""
        w = self.infos[sufs["weight"]]
        k = self._infer_k(scheme_name, sufs)
        if len(w.shape) != 2 or k <= 0:
            return set()
        try:
            return {spec.name for spec in get_scheme(scheme_name).tensor_specs(int(w.shape[0]), k)}
        except ValueError:  # shape problems are reported by Scheme.validate
            return set()

    def _file(self, key) -> str:
        info = self.infos.get(key)
        return info.file if info else self.desc_name

    def _tensor(self, key) -> torch.Tensor:
        from safetensors import safe_open

        info = self.infos[key]
        try:
            h = self._handles.get(info.file)
            if h is None:
                h = safe_open(str(resolve_inside(self.root, info.file)), framework="pt", device="cpu")
                self._handles[info.file] = h
            return h.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - the header passed our checks; report what safetensors says
            self.err(info.file, key, f"cannot read the tensor ({type(e).__name__}: {e})")
            raise _Fatal from None

    def _load_float(self, key):
        if self.load:
            self.floats[key] = self._tensor(key)

    # ---- 5. shared inputs ----
    def _check_shared_inputs(self):
        """Layers that read one input must share mul_scale / input_scale / input_offset: the producer's record
        (``shared_input_groups``) plus vLLM's packing (q/k/v_proj -> qkv_proj, gate/up_proj -> gate_up_proj),
        which holds whatever the record says.  Nothing is inferred from other names."""
        dn = self.desc_name
        linear_labels: dict[str, str] = {p: e.label for p, e in self.layers.items()}
        for key, lab in self.labels.items():  # FLOAT linears take part in the packing label rule
            if lab == FLOAT_LABEL and key.endswith(".weight"):
                prefix, _, _ = split_tensor_key(key, self.labels)
                linear_labels.setdefault(prefix, FLOAT_LABEL)
        checks: list[tuple[list[str], str]] = []
        for members in packed_groups(linear_labels):
            parent = members[0].rpartition(".")[0]
            leaves = "/".join(m.rpartition(".")[2] for m in members)
            where = f"{parent}.{leaves}" if parent else leaves
            labs = {m.rpartition(".")[2]: linear_labels[m] for m in members}
            if len(set(labs.values())) > 1:
                self.err(self._file(self.layers[members[0]].keys["weight"]) if members[0] in self.layers else dn,
                         where, f"fused siblings carry different labels {labs}: vLLM packs them into one GEMM, so "
                                "every shard must be quantized the same way")
                continue
            checks.append((members, f"fused siblings {where} (packed into one GEMM by vLLM)"))
        for i, members in enumerate(self.shared_groups or []):
            missing = [m for m in members if m not in self.layers]
            if missing:
                self.err(dn, f"{SHARED_INPUT_GROUPS_KEY}[{i}]",
                         f"names {missing}, which {'is' if len(missing) == 1 else 'are'} not a quantized layer of this "
                         "checkpoint (stale or wrong record)")
                continue
            checks.append((members, f"layers of {SHARED_INPUT_GROUPS_KEY}[{i}] (recorded as reading one input)"))
        for members, what in checks:
            ents = [self.layers[p] for p in members if p in self.layers]
            for suf in SHARED_INPUT_TENSORS:
                vals = [(e, e.tensors[suf]) for e in ents if suf in e.tensors]
                if not vals:
                    continue
                if len(vals) != len(ents):
                    have = [e.keys[suf] for e, _ in vals]
                    self.err(self._file(have[0]), have[0], f"{what} must share '{suf}', but only {have} store it")
                    continue
                ref_e, ref = vals[0]
                for e, v in vals[1:]:
                    if v.shape != ref.shape or not torch.equal(v.float(), ref.float()):
                        self.err(self._file(e.keys[suf]), e.keys[suf],
                                 f"{what} must share '{suf}' (one input); differs from {ref_e.keys[suf]}")
                        break

    # ---- 6. optional/ (offline QuaRot extra info) ----
    def _load_optional(self):
        dn = self.desc_name
        opt = self.desc.get("optional") or {}
        if not isinstance(opt, dict):
            return  # reported by _check_globals
        for scope, info in opt.items():
            rmap = info.get("rotation_map") if isinstance(info, dict) else None
            if not rmap:
                self.err(dn, f"optional.{scope}", f"unknown optional section {scope!r}; not supported")
                continue
            if not isinstance(rmap, dict):
                self.err(dn, f"optional.{scope}.rotation_map",
                         f"must be an object {{tensor name: file}}, got {type(rmap).__name__}")
                continue
            for name, rel in rmap.items():
                if not isinstance(rel, str):
                    self.err(dn, f"optional.{scope}.rotation_map.{name}", f"file must be a string, got {rel!r:.80}")
                    continue
                try:
                    p = resolve_inside(self.root, rel)
                    infos, _ = read_header(p, rel)
                except (ValueError, OSError) as e:
                    self.err(rel, name, f"optional tensor file unreadable: {e}")
                    continue
                if name not in infos:
                    self.err(rel, name, f"optional.{scope}.rotation_map names {name!r} but the file lacks it")
                    continue
                if self.load:
                    from safetensors import safe_open

                    try:
                        with safe_open(str(p), framework="pt", device="cpu") as h:
                            self.optional[f"{scope}.{name}"] = h.get_tensor(name)
                    except Exception as e:  # noqa: BLE001 - header passed our checks; report what safetensors says
                        self.err(rel, name, f"cannot read the tensor ({type(e).__name__}: {e})")
