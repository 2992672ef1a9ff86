"""SoC profiles of the emulator: what each Ascend generation reports and which kernels it has.

Versions and names follow npu_ops.md section 0 (vllm-ascend ``_SOC_VERSION_TO_DEVICE_TYPE``); the
MX / dual-level kernels exist only on A5 (ops-nn registers them only for ascend950, aclnn returns
361001 elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SocProfile", "PROFILES", "get_profile"]


@dataclass(frozen=True)
class SocProfile:
    name: str  # "A2" | "A3" | "A5"
    soc_version: int
    device_name: str
    has_mx: bool  # npu_dynamic_mx_quant, MX npu_quant_matmul, dual-level ops
    strict_nz: bool  # A5: no view/slice/contiguous after an NZ cast


PROFILES = {
    "A2": SocProfile("A2", 222, "Ascend910B3", has_mx=False, strict_nz=False),
    "A3": SocProfile("A3", 250, "Ascend910_9391", has_mx=False, strict_nz=False),
    "A5": SocProfile("A5", 260, "Ascend950PR", has_mx=True, strict_nz=True),
}


def get_profile(soc: str) -> SocProfile:
    key = str(soc).upper()
    if key not in PROFILES:
        raise ValueError(f"unknown emulated SoC {soc!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[key]
