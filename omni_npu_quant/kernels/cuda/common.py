"""What the CUDA kernels share: device support (family, Triton present), the verified labels."""
from __future__ import annotations

from ..base import LinearKernel

SM90_VERIFIED = ("tested on an H200 (SM90): tests/backends/cuda -m gpu, quantizer bytes and outputs vs the reference, "
                 "2026-11-21")
CUDA_DOC = "documented only (cuda_mirror.md section 4; CUDA backend tests decide)"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True


def ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


class CudaKernel(LinearKernel):
    device_kind = "cuda"
    families: tuple[str, ...] = ("sm80", "sm89", "sm90", "sm100", "sm120")

    @classmethod
    def is_supported(cls, device):
        if device.family is None:
            return False, device.detail or "no CUDA device (or a GPU older than SM80)"
        if device.family not in cls.families:
            return False, cls.family_refusal(device.family)
        if device.probed and not triton_available():
            return False, "triton is not importable (pip install triton)"
        return True, ""

    @classmethod
    def family_refusal(cls, family: str) -> str:
        return f"{cls.name} runs on {'/'.join(cls.families)}, not {family}"

    def verified_for(self, device) -> str:
        return SM90_VERIFIED if device.family == "sm90" else CUDA_DOC

    @property
    def verified(self) -> str:  # type: ignore[override]
        return self.verified_for(self.target.device)

    @property
    def torch_device(self):
        import torch

        return torch.device(self.dev)
