"""Read GPTQ and AutoRound int4 checkpoints as W4A16 layers (strict, bit-preserving); 8-bit layers of
mixed-bit AutoRound checkpoints (``extra_config``) and 8-bit GPTQ checkpoints are read as W8A16.

Detection: ``quantization_config`` in ``config.json`` (also ``quantization_config.json`` written by
auto-round, ``quantize_config.json`` of AutoGPTQ, and a diffusers pipeline's ``transformer*/config.json``)
with ``quant_method`` ``gptq`` or ``auto-round``.  ``find_gptq_config(path)`` says whether a directory is
one; ``checkpoint.reader.load_checkpoint`` dispatches here when it is.

Stored format (GPTQ, auto-round's ``auto_round:auto_gptq`` / ``auto_round`` / ``auto_round:gptqmodel``
packings; auto-round 0.16 ``auto_round_extension/torch/qlinear_torch{,_zp}.py``, AutoGPTQ):

* ``p.qweight`` int32 (K/8, N): unsigned 4-bit values ``u`` packed along K, nibble j of row r = input
  channel 8r + j, least significant first.
* ``p.qzeros`` int32 (G, N/8): unsigned zero points packed along N the same way.  GPTQ "v1"
  (``checkpoint_format: gptq``, AutoGPTQ, ``auto_round:auto_gptq``) stores ``zero - 1`` (so a stored 7 is
  zero 8); ``gptq_v2`` and the ``auto_round`` / ``auto_round:gptqmodel`` packings store the zero itself.
* ``p.scales`` float (G, N); ``p.g_idx`` int32 (K,) optional: group of each input channel (act-order
  when not ``k // group_size``); ``p.bias`` optional.
* dequantization: ``w[n, k] = (u[k, n] - zero[g_idx[k], n]) * scales[g_idx[k], n]``.

Conversion to the canonical W4A16 tensors (``schemes/w4a16.py``), exact: ``weight = u - 8`` (int8,
(N, K)), ``weight_offset = zero - 8`` (fp32, (N, G); omitted when all zero), ``weight_scale = scales.T``
in the stored dtype, ``bias`` as stored.  An act-order ``g_idx`` becomes ``input_perm`` (the stable sort
of ``g_idx``) with the weight columns permuted so that groups are contiguous.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import HeaderError, read_header, resolve_inside
from .format import DESC_RE as _DESC_RE

__all__ = ["GPTQ_METHODS", "GptqConfig", "find_gptq_config", "load_gptq_checkpoint", "validate_gptq_checkpoint",
           "convert_to_ascendv1",
           "unpack_gptq_qweight", "unpack_gptq_qzeros", "pack_gptq_qweight", "pack_gptq_qzeros", "gptq_to_w4a16"]

GPTQ_METHODS = ("gptq", "auto-round", "auto_round", "autoround")
# packing formats whose qzeros hold zero - 1 ("v1") / the zero itself
_V1_PACKINGS = ("auto_round:auto_gptq", "auto_gptq", "gptq")
_V2_PACKINGS = ("auto_round", "auto_round:gptqmodel", "gptqmodel", "gptq_v2")
_CONFIG_FILES = ("config.json", "quantization_config.json", "quantize_config.json")
_WEIGHT_RE = re.compile(r"^(model|diffusion_pytorch_model)(-\d+-of-\d+)?\.safetensors$")
_INDEX_NAMES = ("model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json")
_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx", "bias")
_TRANSFORMER_RE = re.compile(r"^transformer(_\d+)?$")
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)
LABEL = "W4A16"
SCHEME = "w4a16"
SCHEME_OF_BITS = {4: ("w4a16", "W4A16"), 8: ("w8a16", "W8A16")}  # mixed-bit AutoRound: 8-bit layers are W8A16


@dataclass(frozen=True)
class GptqConfig:
    """The parts of a GPTQ / AutoRound ``quantization_config`` that decide the stored layout."""

    file: str  # where it was found, relative to the checkpoint directory
    method: str  # "gptq" | "auto-round"
    bits: int
    group_size: int  # -1 = per channel
    sym: bool
    desc_act: bool
    packing: str  # packing_format / checkpoint_format
    zeros_minus_one: bool  # GPTQ v1 qzeros
    raw: dict = field(default_factory=dict, compare=False, hash=False)
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # auto-round per-layer overrides


class GptqConfigError(ValueError):
    def __init__(self, file: str, key: str, message: str):
        super().__init__(f"{file} [{key}]: {message}")
        self.file, self.key, self.message = file, key, message


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptqConfigError(path.name, "", f"cannot read JSON: {e}") from None


def _quant_config_in(d: Path) -> tuple[str, dict] | None:
    """(file name, quantization_config) of a GPTQ / AutoRound model directory, or None."""
    for name in _CONFIG_FILES:
        p = d / name
        if not p.is_file():
            continue
        try:
            obj = _read_json(p)
        except GptqConfigError:  # unreadable JSON: not detected here (the msModelSlim reader reports its own)
            continue
        if not isinstance(obj, dict):
            continue
        qc = obj.get("quantization_config") if name == "config.json" else obj
        if isinstance(qc, dict) and str(qc.get("quant_method", "gptq" if name == "quantize_config.json" else "")
                                       ).lower() in GPTQ_METHODS:
            return name, qc
    return None


def find_gptq_config(path) -> tuple[Path, str, dict] | None:
    """``(model dir, config file name, quantization_config)`` when ``path`` is a GPTQ / AutoRound checkpoint
    (or a diffusers pipeline whose one ``transformer*/`` subfolder is), else None.  Raises
    ``GptqConfigError`` for a pipeline with several quantized transformers (name the subfolder)."""
    root = Path(path)
    if not root.is_dir() or any(_DESC_RE.match(p.name) for p in root.iterdir()):
        return None  # an msModelSlim directory (its reader takes precedence)
    found = _quant_config_in(root)
    if found:
        return root, found[0], found[1]
    if (root / "model_index.json").is_file() or any(_TRANSFORMER_RE.match(d.name) for d in root.iterdir()
                                                    if d.is_dir()):
        subs = []
        for d in sorted(root.iterdir()):
            if d.is_dir() and _TRANSFORMER_RE.match(d.name):
                f = _quant_config_in(d)
                if f:
                    subs.append((d, f))
        if len(subs) > 1:
            raise GptqConfigError(root.name, "", f"a pipeline with several GPTQ/AutoRound transformers "
                                                 f"({', '.join(d.name for d, _ in subs)}): pass one subfolder")
        if subs:
            d, (name, qc) = subs[0]
            return d, name, qc
    return None


def parse_config(file: str, qc: dict) -> GptqConfig:
    """Validate a quantization_config; raises ``GptqConfigError`` naming the file and key."""
    method = str(qc.get("quant_method", "gptq")).lower().replace("_", "-")
    method = "auto-round" if method in ("auto-round", "autoround") else "gptq"
    bits = qc.get("bits")
    if bits not in SCHEME_OF_BITS:
        raise GptqConfigError(file, "bits", f"bits={bits!r}: only 4-bit (scheme W4A16) and 8-bit (scheme W8A16) "
                                            f"GPTQ/AutoRound checkpoints are read")
    gs = qc.get("group_size", -1)
    if not isinstance(gs, int) or isinstance(gs, bool) or (gs != -1 and gs <= 0):
        raise GptqConfigError(file, "group_size", f"group_size={gs!r}: expected -1 (per channel) or a positive int")
    sym = qc.get("sym", True)
    if not isinstance(sym, bool):
        raise GptqConfigError(file, "sym", f"sym={sym!r}: expected true or false")
    desc_act = bool(qc.get("desc_act", False))
    dt = str(qc.get("data_type", "int")).lower()
    if method == "auto-round" and dt not in ("int", "int4", "int_sym", "int_asym"):
        raise GptqConfigError(file, "data_type", f"data_type={dt!r}: only integer AutoRound checkpoints are read")
    act_bits = qc.get("act_bits", 16)
    if act_bits not in (None, 16, 32):
        raise GptqConfigError(file, "act_bits", f"act_bits={act_bits!r}: activation quantization is not served "
                                                f"(W4A16 keeps activations in float)")
    if method == "auto-round":
        packing = str(qc.get("packing_format", qc.get("backend", "auto_round:auto_gptq")))
    else:
        packing = str(qc.get("checkpoint_format", "gptq"))
    if packing in _V1_PACKINGS:
        v1 = True
    elif packing in _V2_PACKINGS:
        v1 = False
    else:
        key = "packing_format" if method == "auto-round" else "checkpoint_format"
        raise GptqConfigError(file, key, f"{key}={packing!r} is not a GPTQ packing (read: "
                                         f"{', '.join(_V1_PACKINGS + _V2_PACKINGS)}; AWQ / Marlin / exllama "
                                         f"layouts are not)")
    extra = qc.get("extra_config") or {}
    if not isinstance(extra, dict):
        raise GptqConfigError(file, "extra_config", "must be an object {layer: {bits, group_size, sym}}")
    return GptqConfig(file, method, bits, gs, sym, desc_act, packing, v1, dict(qc), dict(extra))


# ---- packing ------------------------------------------------------------------------------------
def _shifts(bits: int) -> torch.Tensor:
    return torch.arange(0, 32, bits, dtype=torch.int64)


def unpack_gptq_qweight(qw: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """int32 (K*bits/32, N) -> unsigned values int32 (K, N) (field j of row r = row (32/bits) r + j)."""
    kw, n = qw.shape
    per = 32 // bits
    u = ((qw.to(torch.int64) & 0xFFFFFFFF).unsqueeze(1) >> _shifts(bits).reshape(1, per, 1)) & (2 ** bits - 1)
    return u.reshape(kw * per, n).to(torch.int32)


def unpack_gptq_qzeros(qz: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """int32 (G, N*bits/32) -> unsigned values int32 (G, N) (field j of column c = column (32/bits) c + j)."""
    g, nw = qz.shape
    per = 32 // bits
    u = ((qz.to(torch.int64) & 0xFFFFFFFF).unsqueeze(-1) >> _shifts(bits)) & (2 ** bits - 1)
    return u.reshape(g, nw * per).to(torch.int32)


def _to_int32(word: torch.Tensor) -> torch.Tensor:
    return torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32)


def pack_gptq_qweight(u: torch.Tensor) -> torch.Tensor:
    """Unsigned values (K, N) in [0, 15] -> int32 (K/8, N)."""
    k, n = u.shape
    v = u.to(torch.int64).reshape(k // 8, 8, n)
    return _to_int32((v << _SHIFTS.reshape(1, 8, 1)).sum(1))


def pack_gptq_qzeros(z: torch.Tensor) -> torch.Tensor:
    """Unsigned values (G, N) in [0, 15] -> int32 (G, N/8)."""
    g, n = z.shape
    v = z.to(torch.int64).reshape(g, n // 8, 8)
    return _to_int32((v << _SHIFTS).sum(-1))


class LayerProblem(ValueError):
    def __init__(self, tensor: str, message: str):
        super().__init__(message)
        self.tensor = tensor


def gptq_to_w4a16(prefix: str, t: dict[str, torch.Tensor], *, zeros_minus_one: bool, group_size: int | None = None,
                  sym: bool | None = None, warn=None, bits: int = 4) -> tuple[dict[str, torch.Tensor], int]:
    """GPTQ tensors of one layer (``qweight``, ``qzeros``, ``scales``, optional ``g_idx``, ``bias``) ->
    (canonical tensor set, K): W4A16 for ``bits`` 4, W8A16 for 8 (``u - 2**(bits-1)`` and
    ``zero - 2**(bits-1)``).  Raises ``LayerProblem`` naming the tensor; ``warn(tensor, msg)`` receives
    non-fatal findings."""
    per, mid = 32 // bits, 2 ** (bits - 1)
    for s in ("qweight", "qzeros", "scales"):
        if s not in t:
            raise LayerProblem(f"{prefix}.{s}", "missing: a GPTQ layer needs qweight, qzeros and scales")
    qw, qz, sc = t["qweight"], t["qzeros"], t["scales"]
    if qw.dtype != torch.int32 or qw.dim() != 2:
        raise LayerProblem(f"{prefix}.qweight", f"expected 2-D int32 (K/{per}, N), got {qw.dtype} {list(qw.shape)}")
    k, n = per * int(qw.shape[0]), int(qw.shape[1])
    if sc.dtype not in (torch.float16, torch.bfloat16, torch.float32) or sc.dim() != 2 or sc.shape[1] != n:
        raise LayerProblem(f"{prefix}.scales", f"expected float (G, N={n}), got {sc.dtype} {list(sc.shape)}")
    g = int(sc.shape[0])
    if qz.dtype != torch.int32 or n % per or tuple(qz.shape) != (g, n // per):
        raise LayerProblem(f"{prefix}.qzeros", f"expected int32 (G={g}, N/{per}={n / per:g}) for {bits}-bit qweight "
                                               f"{list(qw.shape)}, got {qz.dtype} {list(qz.shape)}")
    if g < 1 or k % g:
        raise LayerProblem(f"{prefix}.scales", f"{g} groups do not divide K={k} evenly (a partial last group "
                                               f"is not representable as per-group scales)")
    gs = k // g
    if group_size is not None and group_size != -1 and g > 1 and gs != group_size:
        raise LayerProblem(f"{prefix}.scales", f"{g} groups for K={k} means group size {gs}, but the "
                                               f"quantization_config says group_size={group_size}")
    if group_size == -1 and g != 1:
        raise LayerProblem(f"{prefix}.scales", f"group_size=-1 (per channel) but scales has {g} groups")
    if not bool(torch.isfinite(sc.float()).all()):
        raise LayerProblem(f"{prefix}.scales", "non-finite scale values")
    u = unpack_gptq_qweight(qw, bits)  # (K, N) in [0, 2**bits)
    z = unpack_gptq_qzeros(qz, bits)  # (G, N)
    if zeros_minus_one:
        z = z + 1  # v1: stored zero - 1 (AutoGPTQ convention)
    out: dict[str, torch.Tensor] = {}
    weight = (u - mid).t().contiguous().to(torch.int8)  # (N, K), signed
    offset = (z - mid).t().contiguous().to(torch.float32)  # (N, G)
    scale = sc.t().contiguous()
    if sym is True and bool((offset != 0).any()) and warn is not None:
        warn(f"{prefix}.qzeros", f"quantization_config says sym=true but the stored zero points are not all {mid}; "
                                 "the stored zero points are used")
    gi = t.get("g_idx")
    if gi is not None:
        if gi.dtype not in (torch.int32, torch.int64) or tuple(gi.shape) != (k,):
            raise LayerProblem(f"{prefix}.g_idx", f"expected int32 ({k},), got {gi.dtype} {list(gi.shape)}")
        gi64 = gi.to(torch.int64)
        if k and (int(gi64.min()) < 0 or int(gi64.max()) >= g):
            raise LayerProblem(f"{prefix}.g_idx", f"values must lie in [0, {g - 1}] (the scale groups), got "
                                                  f"[{int(gi64.min())}, {int(gi64.max())}]")
        trivial = torch.arange(k, dtype=torch.int64) // gs
        if not torch.equal(gi64, trivial):
            if bits != 4:
                raise LayerProblem(f"{prefix}.g_idx", f"act-order (a non-sequential g_idx) is read for 4-bit layers "
                                                      f"only, this layer has {bits} bits")
            perm = torch.sort(gi64, stable=True).indices
            if not torch.equal(gi64[perm], trivial):
                counts = torch.bincount(gi64, minlength=g).tolist()
                raise LayerProblem(f"{prefix}.g_idx", f"act-order groups must each hold {gs} input channels "
                                                      f"(K/G); got group sizes {counts[:8]}{'...' if g > 8 else ''}")
            weight = weight[:, perm].contiguous()
            out["input_perm"] = perm.to(torch.int32)
    out = {"weight": weight, "weight_scale": scale, **({"weight_offset": offset} if bool((offset != 0).any()) else {}),
           **out}
    if "bias" in t:
        b = t["bias"]
        if not b.is_floating_point() or tuple(b.shape) != (n,):
            raise LayerProblem(f"{prefix}.bias", f"expected float ({n},), got {b.dtype} {list(b.shape)}")
        out["bias"] = b
    return out, k


# ---- reading ------------------------------------------------------------------------------------
class _GptqScan:
    def __init__(self, path, *, load: bool = True, strict: bool = True):
        self.path = Path(path)
        self.load, self.strict = load, strict
        self.problems = []
        self.root: Path | None = None
        self.cfg: GptqConfig | None = None
        self.files: list[str] = []
        self.infos: dict = {}
        self.layers: dict = {}
        self.floats: dict[str, torch.Tensor] = {}
        self.desc: dict = {}

    def err(self, file, tensor, msg, severity="error"):
        from .reader import Problem

        self.problems.append(Problem(str(file), str(tensor), msg, severity))

    def run(self):
        try:
            found = find_gptq_config(self.path)
        except GptqConfigError as e:
            self.err(e.file, e.key, e.message)
            return
        if found is None:
            self.err(str(self.path), "", "no GPTQ/AutoRound quantization_config (config.json, "
                                         "quantization_config.json or quantize_config.json) found")
            return
        self.root, name, qc = found
        rel = name if self.root == self.path else f"{self.root.name}/{name}"
        try:
            self.cfg = parse_config(rel, qc)
        except GptqConfigError as e:
            self.err(e.file, e.key, e.message)
            return
        if not self._discover():
            return
        self._classify()

    def _discover(self) -> bool:
        root = self.root
        names = sorted(p.name for p in root.iterdir())
        index = [n for n in names if n in _INDEX_NAMES]
        weights = [n for n in names if _WEIGHT_RE.match(n)]
        if index:
            try:
                wm = json.loads(resolve_inside(root, index[0]).read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(wm, dict):
                    raise TypeError("weight_map is not an object")
            except (ValueError, OSError, KeyError, TypeError) as e:
                self.err(index[0], "", f"invalid index JSON (expected {{'weight_map': {{key: file}}}}): {e}")
                return False
            files = sorted(set(wm.values()))
            for w in weights:
                if w not in files:
                    self.err(w, "", f"weight file not referenced by {index[0]}")
        else:
            if not weights:
                self.err(root.name, "", "no model.safetensors / diffusion_pytorch_model.safetensors (or shards + "
                                        "index) next to the GPTQ/AutoRound config")
                return False
            if len(weights) > 1:
                self.err(root.name, "", f"several weight files {weights} and no index JSON")
                return False
            files, wm = weights, None
        ok = True
        for f in files:
            try:
                infos, _ = read_header(resolve_inside(root, f), f)
            except HeaderError as e:
                self.err(f, e.tensor, f"corrupt safetensors: {e}")
                ok = False
                continue
            except (ValueError, OSError) as e:
                self.err(f, "", f"cannot read: {e}")
                ok = False
                continue
            for key, info in infos.items():
                if key in self.infos:
                    self.err(f, key, f"tensor stored twice (also in {self.infos[key].file})")
                    continue
                if wm is not None and wm.get(key) != f:
                    self.err(f, key, f"{index[0]} says this tensor is in {wm.get(key)}")
                self.infos[key] = info
        if wm is not None and ok:
            for key, f in wm.items():
                if key not in self.infos:
                    self.err(f, key, f"listed in {index[0]} but not stored in {f}")
        self.files = list(files)
        return ok

    def _tensor(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        info = self.infos[key]
        with safe_open(str(resolve_inside(self.root, info.file)), framework="pt", device="cpu") as h:
            return h.get_tensor(key)

    def _layer_cfg(self, prefix: str) -> dict:
        for name, over in self.cfg.extra.items():
            if isinstance(over, dict) and (name == prefix or (_is_regex(name) and re.fullmatch(name, prefix))):
                return over
        return {}

    def _classify(self):
        from .reader import LayerEntry

        groups: dict[str, dict[str, str]] = {}
        for key in self.infos:
            prefix, _, suf = key.rpartition(".")
            if suf == "qweight":
                groups.setdefault(prefix, {})
        for key in self.infos:
            prefix, _, suf = key.rpartition(".")
            if prefix in groups:
                groups[prefix][suf] = key
            elif suf in ("qzeros", "scales", "g_idx"):
                self.err(self.infos[key].file, key, f"GPTQ tensor without {prefix}.qweight")
        cfg = self.cfg
        for prefix in sorted(groups):
            sufs = groups[prefix]
            file = self.infos[sufs["qweight"]].file
            bad = [s for s in sufs if s not in _SUFFIXES]
            for s in bad:
                self.err(self.infos[sufs[s]].file, sufs[s], f"unexpected tensor next to {prefix}.qweight (a GPTQ "
                                                            f"layer stores {', '.join(_SUFFIXES)})")
            over = self._layer_cfg(prefix)
            bits = over.get("bits", cfg.bits)
            if bits not in SCHEME_OF_BITS:
                self.err(file, sufs["qweight"], f"extra_config gives this layer bits={bits!r}; only 4-bit (W4A16) "
                                                f"and 8-bit (W8A16) GPTQ layers are read")
                continue
            scheme_name, label = SCHEME_OF_BITS[bits]
            if bad and self.strict:
                continue
            if not self.load:
                continue
            tensors = {s: self._tensor(k) for s, k in sufs.items() if s in _SUFFIXES}
            try:
                ts, k = gptq_to_w4a16(prefix, tensors, zeros_minus_one=cfg.zeros_minus_one,
                                      group_size=over.get("group_size", cfg.group_size),
                                      sym=over.get("sym", cfg.sym), bits=bits,
                                      warn=lambda tensor, msg: self.err(file, tensor, msg, "warning"))
            except LayerProblem as e:
                self.err(self.infos[e.tensor].file if e.tensor in self.infos else file, e.tensor, str(e))
                continue
            if cfg.desc_act is False and "input_perm" in ts:
                self.err(file, sufs.get("g_idx", prefix), "g_idx is not sequential but the quantization_config says "
                                                          "desc_act=false; read as act-order", "warning")
            if self.strict:
                from ..schemes.base import SchemeValidationError
                from ..schemes.registry import get_scheme

                try:
                    get_scheme(scheme_name).validate(ts, k=k, where=prefix)
                except SchemeValidationError as e:
                    self.err(file, prefix, f"{e} (converted from GPTQ)")
                    continue
            keys = {"weight": sufs["qweight"], "weight_scale": sufs["scales"]}
            if "weight_offset" in ts:
                keys["weight_offset"] = sufs["qzeros"]
            if "input_perm" in ts:
                keys["input_perm"] = sufs["g_idx"]
            if "bias" in ts:
                keys["bias"] = sufs["bias"]
            self.layers[prefix] = LayerEntry(label, scheme_name, ts, k, keys,
                                             tuple(sorted({self.infos[x].file for x in sufs.values()})))
        attached = {k for sufs in groups.values() for k in sufs.values()}
        for key in sorted(self.infos):
            if key in attached or key.rpartition(".")[2] in ("qzeros", "scales", "g_idx"):
                continue
            if self.load:
                self.floats[key] = self._tensor(key)
        # an msModelSlim-style description of the canonical tensors, for tools that read labels
        desc: dict = {}
        for prefix, e in self.layers.items():
            for s in e.tensors:
                desc[f"{prefix}.{s}"] = "FLOAT" if s == "bias" else e.label
        for key in self.floats:
            desc[key] = "FLOAT"
        gs = {e.tensors["weight"].shape[1] // e.tensors["weight_scale"].shape[1] for e in self.layers.values()
              if e.tensors["weight_scale"].shape[1] > 1}
        labels = {e.label for e in self.layers.values()}
        desc.update({"model_quant_type": (LABEL if LABEL in labels else labels.pop()) if labels else "FLOAT", "group_size": gs.pop() if len(gs) == 1 else 0,
                     "source_format": cfg.method, "packing_format": cfg.packing, "config_file": cfg.file})
        self.desc = desc
        if not self.layers and not any(p.severity == "error" for p in self.problems):
            self.err(cfg.file, "", "the quantization_config names GPTQ/AutoRound but no *.qweight tensor is stored")

    def result(self):
        from .reader import QuantizedCheckpoint

        return QuantizedCheckpoint(str(self.root), self.cfg.method, self.desc, self.layers, self.floats,
                                   list(self.files), {}, [p for p in self.problems if p.severity == "warning"])


def _is_regex(name: str) -> bool:
    return any(c in name for c in "*+?[](){}|\\^$")


def load_gptq_checkpoint(path, *, validate: bool = True):
    """Load a GPTQ / AutoRound directory as a ``QuantizedCheckpoint`` of W4A16 layers (format ``gptq`` or
    ``auto-round``).  Raises ``CheckpointError`` listing every error (file and tensor named)."""
    from .reader import CheckpointError

    scan = _GptqScan(path, load=True, strict=validate)
    scan.run()
    errors = [p for p in scan.problems if p.severity == "error"]
    if errors:
        head = "\n  ".join(str(p) for p in errors[:25])
        more = f"\n  ... and {len(errors) - 25} more" if len(errors) > 25 else ""
        raise CheckpointError(f"GPTQ/AutoRound checkpoint {path} is not loadable ({len(errors)} error(s)):\n  "
                              f"{head}{more}", errors)
    return scan.result()


def validate_gptq_checkpoint(path) -> list:
    """Every problem (errors and warnings) of a GPTQ / AutoRound directory; never raises on bad data."""
    scan = _GptqScan(path, load=True, strict=True)
    try:
        scan.run()
    except Exception as e:  # noqa: BLE001 - defensive: report, never raise on bad data
        scan.err(str(path), "", f"unexpected failure while validating: {type(e).__name__}: {e}")
    return scan.problems


def convert_to_ascendv1(src, out_dir, *, overwrite: bool = False):
    """Write a GPTQ / AutoRound checkpoint as an AscendV1 directory of canonical W4A16 (and W8A16) layers
    (bit-preserving, ``checkpoint.writer.write_ascendv1``): the form vLLM's ``omni_npu_quant`` method and
    vllm-ascend-style tooling read.  ``config.json`` is copied without its ``quantization_config``.
    Returns the output path."""
    from .writer import write_ascendv1

    ck = load_gptq_checkpoint(src)
    cfg_path = Path(ck.path) / "config.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
    layers = {p: (e.label, e.tensors) for p, e in ck.layers.items()}
    return write_ascendv1(out_dir, layers, ck.float_tensors, config=config, overwrite=overwrite)
