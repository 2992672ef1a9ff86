"""Device detection and the one capability table (scheme x device -> backend, mode, reason).

* ``detect_device()`` -> ``DeviceInfo``: an Ascend NPU (``torch_npu`` importable and an NPU
  present; the SoC family from ``torch_npu.npu.get_soc_version()`` or the device name, ranges from
  vllm-project/vllm-ascend ``vllm_ascend/device/hardware.py``), a CUDA GPU (family from the compute
  capability) or the CPU.  ``OMNI_NPU_QUANT_NPU_SIM=A2`` installs the CPU emulator of ``torch_npu``
  first (see ``omni_npu_quant.npu_sim``), so the machine then looks like that SoC.
* ``CAPABILITY_TABLE``: for every scheme and device family, which backend serves it, in which
  mode ("native", "exact fallback", "unsupported"), why, and how the claim was verified.  The NPU
  backend reads its own rows from here; ``omni-npu-quant env`` prints them; docs/hardware.md is
  generated from them.
* ``OMNI_NPU_QUANT_BACKEND`` (``reference|npu|cuda|npu-sim:A2|npu-sim:A3|npu-sim:A5``) overrides
  backend selection (``omni_npu_quant.backends.registry.select_backend``).

Nothing here imports ``torch_npu`` or ``triton`` at module import.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

import torch

__all__ = [
    "DeviceInfo", "CapRow", "BACKEND_ENV", "NPU_SIM_ENV", "NPU_FAMILIES", "CUDA_FAMILIES", "DEVICE_FAMILIES",
    "SCHEMES", "CAPABILITY_TABLE", "soc_family", "soc_family_from_name", "cuda_family", "detect_device",
    "device_from_name", "capability_row", "capability_rows",
]

BACKEND_ENV = "OMNI_NPU_QUANT_BACKEND"
NPU_SIM_ENV = "OMNI_NPU_QUANT_NPU_SIM"

NPU_FAMILIES = ("A2", "A3", "A5", "310P")
CUDA_FAMILIES = ("sm80", "sm89", "sm90", "sm100", "sm120")
DEVICE_FAMILIES = NPU_FAMILIES + CUDA_FAMILIES + ("cpu",)
SCHEMES = ("w8a8_dynamic", "w8a8_static", "w8a16", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")
INT8_SCHEMES = ("w8a8_dynamic", "w8a8_static", "w8a16")
MX_SCHEMES = ("mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")


# ---- SoC / GPU family ------------------------------------------------------------------
def soc_family(soc_version: int) -> str | None:
    """``torch_npu.npu.get_soc_version()`` -> "A2" | "A3" | "A5" | "310P" | None (npu_ops.md section 0)."""
    v = int(soc_version)
    if 220 <= v <= 225:
        return "A2"
    if 250 <= v <= 255:
        return "A3"
    if v == 260:
        return "A5"
    if 200 <= v <= 205:
        return "310P"
    return None


def soc_family_from_name(name: str) -> str | None:
    """Device name (``torch_npu.npu.get_device_name()``) -> family, when the SoC version is unknown."""
    n = name.replace(" ", "").lower()
    if n.startswith("ascend910_93") or n.startswith("ascend910c"):
        return "A3"
    if n.startswith("ascend910b"):
        return "A2"
    if n.startswith("ascend950"):
        return "A5"
    if n.startswith("ascend310p"):
        return "310P"
    return None


def cuda_family(major: int, minor: int) -> str | None:
    """Compute capability -> the family rows of the capability table (None below SM80)."""
    if major == 8:
        return "sm89" if minor >= 9 else "sm80"
    if major == 9:
        return "sm90"
    if major in (10, 11):
        return "sm100"
    if major >= 12:
        return "sm120"
    return None


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "npu" | "cuda" | "cpu"
    family: str | None  # "A2"... / "sm90"... / "cpu"; None = unknown model of that kind
    name: str = ""
    simulated: bool = False  # NPU emulated on CPU by omni_npu_quant.npu_sim
    detail: str = ""

    @property
    def label(self) -> str:
        fam = self.family or "unknown"
        return f"{self.kind}:{fam}" + (" (npu-sim, emulated on CPU)" if self.simulated else "")


def _torch_npu_module():
    """The installed ``torch_npu`` (real or the emulator), or None.  Never imported eagerly elsewhere."""
    if os.environ.get(NPU_SIM_ENV) and "torch_npu" not in sys.modules:
        from .npu_sim import install_from_env

        install_from_env()
    mod = sys.modules.get("torch_npu")
    if mod is not None:
        return mod
    if importlib.util.find_spec("torch_npu") is None:
        return None
    try:
        import torch_npu  # noqa: F401  (lazy: only when present)

        return sys.modules["torch_npu"]
    except Exception:  # a broken install must not break CPU users
        return None


def detect_device() -> DeviceInfo:
    """The accelerator this process would run on (NPU first, then CUDA, else CPU)."""
    npu = _torch_npu_module()
    if npu is not None:
        try:
            if npu.npu.is_available() and npu.npu.device_count() > 0:
                sim = bool(getattr(npu, "__omni_npu_sim__", False))
                name = str(npu.npu.get_device_name(0))
                fam = None
                try:
                    fam = soc_family(int(npu.npu.get_soc_version()))
                except Exception:
                    pass
                fam = fam or soc_family_from_name(name)
                return DeviceInfo("npu", fam, name, simulated=sim)
        except Exception as e:  # pragma: no cover - depends on a real install
            return DeviceInfo("cpu", "cpu", "cpu", detail=f"torch_npu present but unusable: {e}")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return DeviceInfo("cuda", cuda_family(major, minor), torch.cuda.get_device_name(0),
                          detail=f"compute capability {major}.{minor}")
    return DeviceInfo("cpu", "cpu", "cpu")


def device_from_name(name: str) -> DeviceInfo:
    """``"A2"``, ``"npu-sim:A5"``, ``"sm90"``, ``"cuda"``, ``"cpu"``, ``"npu"`` -> DeviceInfo (no probing)."""
    raw = name.strip()
    low = raw.lower()
    if low.startswith("npu-sim:"):
        fam = raw.split(":", 1)[1].upper()
        if fam not in ("A2", "A3", "A5"):
            raise ValueError(f"unknown emulated SoC {raw!r}: use npu-sim:A2, npu-sim:A3 or npu-sim:A5")
        return DeviceInfo("npu", fam, f"npu-sim {fam}", simulated=True)
    for fam in NPU_FAMILIES:
        if low == fam.lower():
            return DeviceInfo("npu", fam, fam)
    if low in CUDA_FAMILIES:
        return DeviceInfo("cuda", low, low)
    if low in ("sm_80", "sm86", "sm87", "sm_86"):
        return DeviceInfo("cuda", "sm80", low)
    if low in ("sm101", "sm103", "sm110"):
        return DeviceInfo("cuda", "sm100", low)
    if low in ("sm121",):
        return DeviceInfo("cuda", "sm120", low)
    if low == "cpu":
        return DeviceInfo("cpu", "cpu", "cpu")
    if low in ("npu", "cuda"):
        return DeviceInfo(low, None, low)
    raise ValueError(f"unknown device {name!r}: use one of {', '.join(DEVICE_FAMILIES)}, npu-sim:A2|A3|A5, npu, cuda")


# ---- the one capability table ---------------------------------------------------------
@dataclass(frozen=True)
class CapRow:
    backend: str  # "npu" | "cuda" | "reference"
    mode: str  # "native" | "exact fallback" | "unsupported"
    reason: str
    verified: str


_SIM = "emulated on CPU against CANN reference semantics (npu-sim)"
_DOC = "documented only"
_CUDA_DOC = "documented only (cuda_mirror.md section 4; CUDA backend tests decide)"
_CPU = "tested on CPU"
_SM90 = ("tested on an H200 (SM90): tests/backends/cuda -m gpu, quantizer bytes and outputs vs the reference, "
         "2026-11-21")

_NPU_INT8 = {
    "w8a8_dynamic": "npu_dynamic_quant + per-token npu_quant_matmul (int8 weight, FRACTAL_NZ)",
    "w8a8_static": "npu_quantize + npu_quant_matmul with deq_scale (fp32 for bf16, int64 for fp16) and int32 quant_bias",
    "w8a16": "npu_weight_quant_batchmatmul (antiquant_offset negated; scales in the activation dtype)",
}
_NPU_MX_A5 = {
    "mxfp8": "npu_dynamic_mx_quant(float8_e4m3fn) + MX npu_quant_matmul (E8M0 scales, group_sizes=[1,1,32])",
    "mxfp4": "npu_dynamic_mx_quant(float4_e2m1fn_x2) + MX npu_quant_matmul (FP4 x1/x2, group_sizes=[1,1,32])",
    "w4a8_mxfp": "npu_dynamic_mx_quant(float8_e4m3fn) + MX W4A8 npu_quant_matmul (group_sizes=[0,0,32])",
    "mxfp4_dual": "npu_dynamic_dual_level_mx_quant(smooth_scale=mul_scale) + npu_dual_level_quant_matmul (NZ weight)",
}
_NPU_MX_A2 = {
    "mxfp8": "no MX kernels on A2/A3 (aclnn 361001): E4M3 x E8M0 weights decoded exactly to the activation dtype once "
             "(fp32 where not representable), dense matmul; activations unquantized unless act_fake_quant",
    "mxfp4": "no MX kernels on A2/A3: FP4 weight x2 is an int8 in [-12,12] with a power-of-two scale per 32-group -> "
             "npu_weight_quant_batchmatmul(antiquant_group_size=32), exact; activations unquantized unless act_fake_quant",
    "w4a8_mxfp": "no MX kernels on A2/A3: same exact int8 + power-of-two group-scale weight as mxfp4; activations "
                 "unquantized unless act_fake_quant",
    "mxfp4_dual": "no dual-level kernels on A2/A3: level-0 folded into the per-32 group scale (2^(e-1)*l0 rounded to the "
                  "activation dtype: relative weight error <= 2^-8 bf16 / 2^-11 fp16, not bit-exact); "
                  "npu_weight_quant_batchmatmul(antiquant_group_size=32)",
}
_CUDA = {
    # (sm80/sm89, sm90, sm100, sm120)
    "w8a8_dynamic": ("native", "Triton int8 tl.dot -> int32, fused quantizer/epilogue"),
    "w8a8_static": ("native", "Triton int8 GEMM, quant_bias added in int32, x deq_scale in fp32"),
    "w8a16": ("exact fallback", "weights dequantized, bf16/fp32 GEMM"),
}


def _build_table() -> dict[tuple[str, str], CapRow]:
    t: dict[tuple[str, str], CapRow] = {}
    for s in SCHEMES:
        # Ascend
        for fam in ("A2", "A3", "A5"):
            if s in INT8_SCHEMES:
                t[(s, fam)] = CapRow("npu", "native", _NPU_INT8[s], _SIM)
            elif fam == "A5":
                t[(s, fam)] = CapRow("npu", "native", _NPU_MX_A5[s] + "; A5 only", _SIM)
            else:
                t[(s, fam)] = CapRow("npu", "exact fallback", _NPU_MX_A2[s], _SIM)
        t[(s, "310P")] = CapRow("npu", "unsupported", "Atlas 300I (310P) is not targeted: no emulator profile, no "
                                "bf16, no MX kernels; the reference backend runs instead", _DOC)
        # CUDA (cuda_mirror.md section 4)
        for fam in CUDA_FAMILIES:
            if s in _CUDA:
                mode, why = _CUDA[s]
                if fam == "sm100" and s != "w8a16":
                    why += " (CUTLASS int8 unsupported on cc>=10.0; Triton int8 untested on SM100)"
                if fam == "sm120":
                    why += " (SM120 unverified)"
                t[(s, fam)] = CapRow("cuda", mode, why, _SM90 if fam == "sm90" else _CUDA_DOC)
            elif fam == "sm100":
                t[(s, fam)] = CapRow("cuda", "native", "native MX tensor cores (MXFP8/MXFP4 block-32 scaled MMA); "
                                     "dual-scale per 512-chunk + fp32 combine (untested)", _CUDA_DOC)
            elif fam == "sm120":
                t[(s, fam)] = CapRow("cuda", "exact fallback", "MX kernels not validated on SM120 (99 KB shared "
                                     "memory, no MXFP4 in torch._scaled_mm): exact reference math on the GPU", _CUDA_DOC)
            elif fam == "sm90":
                t[(s, fam)] = CapRow("cuda", "native", "Triton fused MX quantizer + tl.dot_scaled: no MX tensor cores on "
                                     "SM90, operands upcast exactly to bf16 MMA (exact products, fp32 accumulation; "
                                     "dual-scale per 512-chunk); weights stay 4/8-bit", _SM90)
            else:
                t[(s, fam)] = CapRow("cuda", "exact fallback", "MX kernels not validated on this family: exact "
                                     "reference math on the GPU", _CUDA_DOC)
        t[(s, "cpu")] = CapRow("reference", "native", "exact PyTorch reference (fp32 / exact int32 accumulation)", _CPU)
    return t


CAPABILITY_TABLE: dict[tuple[str, str], CapRow] = _build_table()


def _scheme_name(scheme) -> str:
    return scheme if isinstance(scheme, str) else scheme.name


def capability_row(scheme, family: str | None) -> CapRow:
    """The table row for ``scheme`` (name or Scheme) on ``family``; unknown families are unsupported."""
    name = _scheme_name(scheme)
    if name not in SCHEMES:
        from .schemes.registry import LABEL_TO_SCHEME

        name = LABEL_TO_SCHEME.get(name, name)
    row = CAPABILITY_TABLE.get((name, family or ""))
    if row is None:
        if name not in SCHEMES:
            raise ValueError(f"unknown scheme {name!r}; known: {list(SCHEMES)}")
        return CapRow("reference", "unsupported", f"unknown device family {family!r}: no accelerator row", _DOC)
    return row


def capability_rows(family: str) -> list[tuple[str, CapRow]]:
    return [(s, capability_row(s, family)) for s in SCHEMES]
