"""The emulator as third-party code sees it (issue 17): a real package spec, the submodules and names
transformers / accelerate import, ``Tensor.npu()``, the NZ tag through ``param.data = ...``, install
lifetime, and the environment variable's error."""
from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch

from omni_npu_quant import npu_sim
from omni_npu_quant.npu_sim import ENV, NpuSimError, make_module

A2, A5 = make_module("A2"), make_module("A5")


@pytest.fixture
def clean():
    if "torch_npu" in sys.modules and not getattr(sys.modules["torch_npu"], "__omni_npu_sim__", False):
        pytest.skip("a real torch_npu is imported")
    npu_sim.uninstall()
    yield
    if npu_sim.uninstall():  # a test left it installed: clean up, then fail
        pytest.fail("the emulator was left installed")
    assert "torch_npu" not in sys.modules and not hasattr(torch, "npu")
    assert "npu" not in vars(torch.Tensor) and "npu" not in vars(torch.nn.Module)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


# ---- 1. a ModuleSpec, importable submodules ----------------------------------------------
def test_find_spec_and_submodule_imports(clean):
    real = importlib.util.find_spec("torch_npu")  # None here, or a real install's spec
    with npu_sim.install("A2") as mod:
        spec = importlib.util.find_spec("torch_npu")  # raised ValueError (__spec__ is None) before
        assert spec is mod.__spec__ and spec.name == "torch_npu" and spec.submodule_search_locations == []
        assert importlib.util.find_spec("torch_npu.npu") is mod.npu.__spec__
        import torch_npu.npu  # noqa: F401
        from torch_npu.npu import get_soc_version
        from torch_npu.npu.random import manual_seed  # noqa: F401

        assert get_soc_version() == 222 and importlib.import_module("torch_npu.npu") is mod.npu
        with pytest.raises(ModuleNotFoundError, match="torch_npu.contrib"):
            importlib.import_module("torch_npu.contrib")
        assert importlib.util.find_spec("torch_npu.contrib") is None
    spec = importlib.util.find_spec("torch_npu")
    assert (spec is None) == (real is None) and "torch_npu.npu" not in sys.modules


# ---- 2. what transformers 5.20 and accelerate import when they see torch_npu --------------
def test_transformers_and_accelerate_import_the_emulator():
    r = _run("""
        import torch
        from omni_npu_quant import npu_sim
        npu_sim.install("A2")
        from transformers.utils import is_torch_npu_available
        assert is_torch_npu_available() and is_torch_npu_available(check_device=True)
        import transformers.integrations.npu_flash_attention as fa  # from torch_npu import npu_fusion_attention
        from torch_npu.optim import NpuFusedAdamW
        import accelerate, accelerate.state, accelerate.utils.modeling  # noqa: F401  (import torch_npu)
        from accelerate.utils import is_npu_available
        assert is_npu_available()
        from diffusers.utils import is_torch_npu_available as diffusers_sees_npu
        assert not diffusers_sees_npu()  # diffusers also wants package metadata: its NPU-only kernels stay off
        for call in (lambda: fa.npu_fusion_attention(None), lambda: NpuFusedAdamW([]),
                     lambda: torch.npu.memory_allocated(), lambda: torch.npu.amp.GradScaler()):
            try:
                call()
            except NotImplementedError as e:
                assert str(e).startswith("not emulated: torch_npu."), e
            else:
                raise AssertionError("no error")
        torch.npu.manual_seed(7); a = torch.rand(3)
        torch.npu.manual_seed_all(7); assert torch.equal(torch.rand(3), a)
        s = torch.npu.random.get_rng_state_all()[0]; b = torch.rand(2); torch.npu.set_rng_state(s)
        assert torch.equal(torch.rand(2), b)
        free, total = torch.npu.mem_get_info(0)
        assert 0 < free <= total and torch.npu.is_bf16_supported() and torch.npu.current_device() == 0
        torch.npu.set_device("npu:0"); torch.npu.synchronize(); torch.npu.empty_cache()
        try:
            torch.npu.set_device(1)
        except npu_sim.NpuSimError as e:
            assert "one NPU" in str(e)
        else:
            raise AssertionError("device 1 accepted")
        print("OK")
    """)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]


# ---- 3. Tensor.npu() / Module.npu() while installed --------------------------------------
def test_tensor_and_module_npu(clean):
    inst = npu_sim.install("A5")
    t = torch.ones(2, 3).t()
    assert t.npu() is t and t.npu(0) is t and t.npu("npu:0") is t and t.npu(torch.device("cpu")) is t
    assert t.npu(non_blocking=True) is t and torch.ones(1, dtype=torch.float64).npu().dtype == torch.float64
    with pytest.raises(NpuSimError, match="one NPU"):
        t.npu(1)
    m = torch.nn.Linear(2, 2)
    w = m.weight
    assert m.npu() is m and m.weight is w and m.npu(0) is m
    inst.uninstall()
    assert not hasattr(torch.ones(1), "npu") and not hasattr(m, "npu")


# ---- 4. the NZ tag survives param.data = npu_format_cast(...) --------------------------------
def test_nz_format_survives_data_assignment():
    p = torch.nn.Parameter(torch.randint(-5, 5, (64, 32), dtype=torch.int8), requires_grad=False)
    src = p.data
    p.data = A2.npu_format_cast(p.data, 29)
    gc.collect()
    assert A2.get_npu_format(p) == 29 and A2.get_npu_format(p.data) == 29
    assert A2.get_npu_format(p) is npu_sim.Format.FRACTAL_NZ and str(A2.get_npu_format(p)) == "FRACTAL_NZ"
    assert A2.get_npu_format(src) == 2 and torch.equal(p.data, src)  # the cast is a copy in the new format
    assert A2.get_npu_format(p.t()) == 2 and A2.get_npu_format(p[:8]) == 2  # views: ND
    q = torch.nn.Parameter(A2.npu_format_cast(torch.zeros(4, 4), 29))
    gc.collect()
    assert A2.get_npu_format(q) == 29
    A2.npu_format_cast_(src, 29)  # in place
    assert A2.get_npu_format(src) == 29
    A2.npu_format_cast_(src, torch.zeros(2, 2))  # the .Tensor variant: take dst's format
    assert A2.get_npu_format(src) == 2
    # the record lives on the storage and dies with it (no leak, no stale tag at a reused address)
    w = A2.npu_format_cast(torch.zeros(8, 8, dtype=torch.int8), 29)
    st = weakref.ref(w.untyped_storage())
    del w
    gc.collect()
    assert st() is None


def test_nz_parameter_is_accepted_by_an_nz_only_op():
    m, n, k = 1, 2, 1024
    x1 = torch.full((m, k // 2), 2 | 2 << 4, dtype=torch.uint8)  # FP4 1.0
    x1_l1 = torch.full((m, k // 64, 2), 127, dtype=torch.uint8)
    w_l1 = torch.full((n, k // 64, 2), 127, dtype=torch.uint8)
    p = torch.nn.Parameter(torch.full((n, k // 2), 2 | 2 << 4, dtype=torch.int8), requires_grad=False)
    with pytest.raises(NpuSimError, match="FRACTAL_NZ"):
        A5.npu_dual_level_quant_matmul(x1, p, torch.ones(m, 2), torch.ones(2, n), x1_l1, w_l1)
    p.data = A5.npu_format_cast(p.data, 29, customize_dtype=torch.int8)
    out = A5.npu_dual_level_quant_matmul(x1, p, torch.ones(m, 2), torch.ones(2, n), x1_l1, w_l1)
    assert out.float().tolist() == [[1024.0, 1024.0]]


# ---- 6. install() lasts until uninstall() / the end of its with block ---------------------------
def test_install_is_not_undone_by_garbage_collection(clean):
    npu_sim.install("A3")  # the returned Installation is dropped at once
    gc.collect()
    import torch_npu

    assert torch_npu.npu.get_soc_version() == 250 and torch.npu is torch_npu.npu
    ctx = npu_sim.install("A5")
    assert ctx.__enter__() is sys.modules["torch_npu"] and ctx.active
    del ctx
    gc.collect()
    assert sys.modules["torch_npu"].profile.name == "A5" and npu_sim.installed().profile.name == "A5"
    assert npu_sim.uninstall() is True  # removes both, restores the state before the first
    assert "torch_npu" not in sys.modules and npu_sim.installed() is None and npu_sim.uninstall() is False
    spent = npu_sim.install("A2")
    spent.uninstall()
    spent.uninstall()  # idempotent
    with pytest.raises(RuntimeError, match="already uninstalled"):
        spent.__enter__()


def test_nested_installs_restore_in_order(clean):
    with npu_sim.install("A2") as m2:
        with npu_sim.install("A5") as m5:
            assert sys.modules["torch_npu"] is m5 and torch.npu is m5.npu
        assert sys.modules["torch_npu"] is m2 and torch.npu is m2.npu and torch.ones(1).npu().device.type == "cpu"
    assert "torch_npu" not in sys.modules


# ---- 7. OMNI_NPU_QUANT_NPU_SIM=garbage ------------------------------------------------------
def test_env_install_and_garbage_value(clean, monkeypatch):
    monkeypatch.setenv(ENV, " a5 ")
    mod = npu_sim.install_from_env()
    assert mod.npu.get_soc_version() == 260 and npu_sim.install_from_env() is mod  # idempotent
    npu_sim.uninstall()
    monkeypatch.setenv(ENV, "")
    assert npu_sim.install_from_env() is None
    monkeypatch.setenv(ENV, "garbage")
    with pytest.raises(npu_sim.NpuSimEnvError) as ei:
        npu_sim.install_from_env()
    msg = str(ei.value)
    assert ENV in msg and "'garbage'" in msg and "A2, A3, A5" in msg and "torch_npu" not in sys.modules


def test_env_garbage_value_in_the_cli_is_an_error_not_a_traceback():
    r = subprocess.run([sys.executable, "-c", "import sys; from omni_npu_quant.cli.main import main; "
                        "sys.exit(main(['env']))"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, ENV: "garbage"})
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and ENV in r.stderr and "A2, A3, A5" in r.stderr, r.stderr[-2000:]
