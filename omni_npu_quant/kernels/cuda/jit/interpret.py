"""Run the Triton kernels on the CPU with Triton's interpreter (``TRITON_INTERPRET=1``).

For CPU CI and development only.  ``enable()`` must run before ``kernels`` is imported.  It also
works around Triton 3.6's interpreter converting 1-element arrays with ``int()``, which NumPy >= 2.4
refuses (runtime loop bounds fail otherwise), and its float8e4nv conversions, which mis-round E4M3 subnormals:
they are modelled as the GPU's ``cvt.rn.satfinite.e4m3x2`` (RNE, saturating at +-448) and ``cvt.rn.f16x2.e4m3x2``
(exact) instructions, through torch's ``float8_e4m3fn`` (the GPU tests check the hardware against the same bytes).
What no interpreter shows is how ptxas compiles a kernel: the H200 byte mismatch of the fp8tc quantizer v2
(2026-12-02) was a ptxas miscompile, found in the sm_90a SASS (``tools/fp8tc_quant_probe.py --check-sass``).
"""
from __future__ import annotations

import os


def enable() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.runtime.interpreter as itp

    if getattr(itp, "_omni_patched", False):
        return
    orig = itp._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    itp._patch_lang_tensor = patched
    _patch_fp8_conversions(itp)
    itp._omni_patched = True


def _patch_fp8_conversions(itp) -> None:
    import numpy as np
    import torch
    import triton.language as tl

    orig = itp.InterpreterBuilder.create_fp_to_fp
    rtne = itp._ir.ROUNDING_MODE.RTNE

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        s, d = src.dtype.scalar, dst_type.scalar
        if d == tl.float8e4nv and s in (tl.float32, tl.float16) and rounding_mode == rtne:
            x = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.float32)
            return itp.TensorHandle(x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8).numpy(), d)
        if s == tl.float8e4nv and d in (tl.float32, tl.float16):
            x = torch.from_numpy(np.ascontiguousarray(src.data)).view(torch.float8_e4m3fn)
            return itp.TensorHandle(x.to(torch.float32 if d == tl.float32 else torch.float16).numpy(), d)
        return orig(self, src, dst_type, rounding_mode)

    itp.InterpreterBuilder.create_fp_to_fp = create_fp_to_fp
