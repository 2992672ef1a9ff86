"""kernels/cuda/jit/launch.py on a CPU machine: the cache key against Triton's own specialization,
the fast path with a fake compiled kernel (what it launches, when it falls back to Triton), the
version / env / interpreter switches.  The GPU side (fast launch on == off, bit for bit) is in
test_launch_gpu.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

pytest.importorskip("triton")
from omni_npu_quant.kernels.cuda.jit import launch as L  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _run(code, **env):
    e = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    e.pop("TRITON_INTERPRET", None)
    e.update(env)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()


# ---------------------------------------------------------------------------------------------
# the key: two arguments with one token get one Triton specialization
# ---------------------------------------------------------------------------------------------
def test_token_never_merges_what_triton_specializes_apart():
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    buf = torch.empty(256, dtype=torch.uint8)
    vals = [0, 1, 2, 15, 16, 17, 32, 4096, 4097, -1, -16, 2 ** 31 - 16, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 16, -(2 ** 31),
            -(2 ** 31) - 16, 2 ** 63 - 16, 2 ** 63, 2 ** 63 + 16, 2 ** 64 - 16, 1.0, 2.5, True, False, None,
            buf, buf[1:], buf[16:], buf.view(torch.int8), buf[:64].view(torch.float32), buf[4:68].view(torch.float32),
            buf.view(torch.float8_e4m3fn)]
    key = L._make_key_fn([types.SimpleNamespace(is_constexpr=False)])
    for a in vals:
        assert key(a) == (L._token(a),), a  # the generated key and the generic token agree
    for a in vals:
        for b in vals:
            if L._token(a) == L._token(b):
                na = native_specialize_impl(BaseBackend, a, False, True, True)
                nb = native_specialize_impl(BaseBackend, b, False, True, True)
                assert na == nb, (a, b, na, nb)


# ---------------------------------------------------------------------------------------------
# fast path with a fake JITFunction / CompiledKernel
# ---------------------------------------------------------------------------------------------
class _Param:
    def __init__(self, c):
        self.is_constexpr = c


class _FakeCompiled:
    def __init__(self, log):
        self.log = log
        self.function = 0xF00
        self.packed_metadata = ("packed",)

    @property
    def run(self):
        def launcher(*a):
            self.log.append(("fast", a))

        return launcher


class _FakeFn:
    """Parameters (x_ptr, M, STRIDE, BLOCK: constexpr)."""

    def __init__(self):
        self.params = [_Param(False), _Param(False), _Param(False), _Param(True)]
        self.pre_run_hooks = []
        self.log = []
        self.compiled = _FakeCompiled(self.log)

    def __getitem__(self, grid):
        def runner(*args, **kw):
            self.log.append(("slow", grid, args, kw))
            return self.compiled

        return runner


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(L, "_cuda_device", lambda: 0)
    monkeypatch.setattr(L, "_cuda_stream", lambda dev: 777)
    fn = _FakeFn()
    return fn, L.FastKernel(fn, enabled=True)


def _kinds(fn):
    return [e[0] for e in fn.log]


def test_fast_path_launches_the_cached_kernel(fake):
    fn, fk = fake
    x = torch.empty(64, dtype=torch.bfloat16)
    opts = (("num_warps", 4),)
    fk((3,), (x, 32, 64, 128), opts)
    assert fn.log[-1] == ("slow", (3,), (x, 32, 64, 128), {"num_warps": 4})
    fk((5, 2), (x, 48, 64, 128), opts)  # same specialization (48 % 16 == 0, like 32): the direct launch
    assert fn.log[-1] == ("fast", (5, 2, 1, 777, 0xF00, ("packed",), None, None, None, x, 48, 64, 128))
    fk((1, 2, 3), (x, 48, 64, 128), opts)
    assert fn.log[-1][1][:3] == (1, 2, 3)
    assert _kinds(fn) == ["slow", "fast", "fast"]


@pytest.mark.parametrize("change", ["m_is_1", "m_not_div16", "misaligned", "dtype", "constexpr", "opts", "big_int",
                                    "none_arg", "device"])
def test_every_specialization_change_goes_to_triton(fake, change, monkeypatch):
    fn, fk = fake
    buf = torch.empty(256, dtype=torch.bfloat16)
    x = buf[:64]
    args, opts = [x, 32, 64, 128], (("num_warps", 4),)
    fk((1,), tuple(args), opts)
    fk((1,), tuple(args), opts)
    assert _kinds(fn) == ["slow", "fast"]
    if change == "m_is_1":
        args[1] = 1
    elif change == "m_not_div16":
        args[1] = 33
    elif change == "misaligned":
        args[0] = buf[1:65]
    elif change == "dtype":
        args[0] = x.view(torch.float16)
    elif change == "constexpr":
        args[3] = 64
    elif change == "opts":
        opts = (("num_warps", 8),)
    elif change == "big_int":
        args[2] = 2 ** 32
    elif change == "none_arg":
        args[0] = None
    elif change == "device":
        monkeypatch.setattr(L, "_cuda_device", lambda: 1)
    fk((1,), tuple(args), opts)
    assert _kinds(fn) == ["slow", "fast", "slow"], change
    fk((1,), tuple(args), opts)
    assert _kinds(fn)[-1] == "fast"


def test_hooks_send_launches_to_triton(fake):
    import triton

    fn, fk = fake
    x = torch.empty(64, dtype=torch.bfloat16)
    fk((1,), (x, 32, 64, 128))
    hook = lambda *a: None  # noqa: E731
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        fk((1,), (x, 32, 64, 128))
        assert _kinds(fn) == ["slow", "slow"]
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    fn.pre_run_hooks.append(hook)
    fk((1,), (x, 32, 64, 128))
    assert _kinds(fn) == ["slow", "slow", "slow"]
    fn.pre_run_hooks.clear()
    fk((1,), (x, 32, 64, 128))
    assert _kinds(fn)[-1] == "fast"


def test_wrong_argument_count_is_refused(fake):
    fn, fk = fake
    with pytest.raises(TypeError, match="all 4 parameters positionally"):
        fk((1,), (torch.empty(4), 32, 64))


def test_unexpected_compiled_kernel_keeps_triton_path(fake, caplog):
    fn, fk = fake
    fn.compiled = object()  # no run / function / packed_metadata
    x = torch.empty(64)
    with caplog.at_level("DEBUG", logger="omni_npu_quant.kernels.cuda.launch"):
        fk((1,), (x, 32, 64, 128))
        fk((1,), (x, 32, 64, 128))
    assert _kinds(fn) == ["slow", "slow"]
    assert not fk.cache
    assert any("compiled kernel not as expected" in r.getMessage() for r in caplog.records)


def test_disabled_kernel_is_a_pass_through():
    fn = _FakeFn()
    fk = L.FastKernel(fn, enabled=False)
    for _ in range(3):
        fk((2,), (None, 16, 16, 64), (("num_warps", 4),))
    assert _kinds(fn) == ["slow"] * 3 and not fk.cache


# ---------------------------------------------------------------------------------------------
# switches: wrong Triton version, the env var, the interpreter
# ---------------------------------------------------------------------------------------------
def test_wrong_version_is_refused():
    assert L.compatibility(types.SimpleNamespace(__version__="3.5.1")).startswith("triton 3.5.1 is not 3.6.")
    assert L.compatibility(types.SimpleNamespace(__version__="4.0.0"))
    import triton

    assert triton.__version__.startswith("3.6.") and L.compatibility() == ""


def test_wrong_version_at_import_turns_it_off():
    out = _run("""
        import logging, triton
        logging.basicConfig(level=logging.DEBUG)
        triton.__version__ = "3.7.0"
        from omni_npu_quant.kernels.cuda.jit import launch
        print(launch.ENABLED, launch.WHY_OFF)
    """)
    assert out[-1].startswith("False triton 3.7.0 is not 3.6.")


def test_env_var_turns_it_off():
    out = _run("""
        from omni_npu_quant.kernels.cuda.jit import launch
        print(launch.ENABLED, launch.WHY_OFF)
    """, OMNI_NPU_QUANT_CUDA_FASTLAUNCH="0")
    assert out[-1] == "False OMNI_NPU_QUANT_CUDA_FASTLAUNCH=0"


def test_interpreter_pass_through():
    """Under TRITON_INTERPRET=1 the launchers run the interpreter (results as the twins) and cache nothing."""
    out = _run("""
        from omni_npu_quant.kernels.cuda.jit import interpret
        interpret.enable()
        import torch
        from omni_npu_quant.kernels.cuda.jit import launch, ops, twins
        x = torch.randn(3, 96)
        for _ in range(2):
            q, s = ops.int8_dynamic_quant(x, None)
        q2, s2 = twins.twin_int8_dynamic_quant(x, None)
        print(launch.ENABLED, ops._INT8_DYN.enabled, len(ops._INT8_DYN.cache), torch.equal(q, q2), torch.equal(s, s2))
        print(launch.WHY_OFF)
    """)
    assert out[-2] == "False False 0 True True"
    assert out[-1].startswith("TRITON_INTERPRET=1")


def test_set_enabled_without_compatible_triton_stays_off(monkeypatch):
    fn = _FakeFn()
    fk = L.FastKernel(fn, enabled=False)
    monkeypatch.setitem(L._REGISTRY, fn, fk)
    monkeypatch.setattr(L, "WHY_OFF", "triton 9.9 is not 3.6.x")
    assert L.set_enabled(True) is False and not fk.enabled
    monkeypatch.setattr(L, "WHY_OFF", "")
    assert L.set_enabled(True) is True and fk.enabled and fk._key is not None
    assert L.set_enabled(False) is False and not fk.enabled
