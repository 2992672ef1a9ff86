"""What every NPU kernel shares: device support, the op-size and dtype guards, ``torch_npu``."""
from __future__ import annotations

import torch

from ... import platform as P
from ...numerics.constants import ACL_FORMAT_FRACTAL_NZ
from ..base import NATIVE, LinearKernel

F32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
MAX_LAST_DIM = 65535  # last-dim limit of the NPU quant matmuls (npu_ops.md section 4)
NPU_SIM_VERIFIED = "emulated on CPU against CANN reference semantics (npu-sim)"
TARGETED = ("A2", "A3", "A5")


def exact_in(t32: torch.Tensor, dtype: torch.dtype) -> bool:
    return bool((t32.to(dtype).to(F32) == t32).all())


class NpuKernel(LinearKernel):
    device_kind = "npu"
    verified = NPU_SIM_VERIFIED
    socs: tuple[str, ...] = TARGETED  # SoC families this kernel runs on

    @classmethod
    def is_supported(cls, device):
        fam = device.family
        if fam is None:
            return False, ("no Ascend NPU detected (torch_npu missing, no device, or unknown SoC); use 'npu-sim:A2' / "
                           "'npu-sim:A5' to emulate one")
        if fam == "310P":
            return False, ("Atlas 300I (310P) is not targeted: no emulator profile, no bf16, no MX kernels; the "
                           "reference backend runs instead")
        if fam not in cls.socs:
            return False, f"{cls.name} runs on {'/'.join(cls.socs)}, not {fam}"
        return True, ""

    def can_implement(self, scheme, n=None, k=None, act_dtype=None):
        ok, why = super().can_implement(scheme, n, k, act_dtype)
        if not ok:
            return ok, why
        if act_dtype is not None and act_dtype not in (BF16, FP16):
            return False, f"NPU quantized kernels take bfloat16/float16 activations, got {act_dtype}"
        for what, v in (("K (in_features)", k), ("N (out_features)", n)):
            if v is not None and v > MAX_LAST_DIM:
                return False, (f"{what} = {v} exceeds the {MAX_LAST_DIM} last-dim limit of the NPU quant matmuls; "
                               f"split the layer (tensor parallelism) or use backend 'reference'")
        return True, ""

    @property
    def soc(self) -> str:
        return self.target.device.family

    def ops(self):
        """The torch_npu module (real or emulated) of this target."""
        return P.torch_npu_ops(self.target.device)

    def nz(self, w_kn: torch.Tensor, **kw) -> torch.Tensor:
        return self.ops().npu_format_cast(w_kn.contiguous(), ACL_FORMAT_FRACTAL_NZ, **kw)

    summaries: dict = {}  # per-scheme "how", when the kernel serves several schemes

    def mode(self, scheme):
        return NATIVE, self.summaries.get(scheme.name, self.summary)
