"""Run the Triton kernels on the CPU with Triton's interpreter (``TRITON_INTERPRET=1``).

For CPU CI and development only.  ``enable()`` must run before ``kernels`` is imported.  It also
works around Triton 3.6's interpreter converting 1-element arrays with ``int()``, which NumPy >= 2.4
refuses (runtime loop bounds fail otherwise).
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
    itp._omni_patched = True
