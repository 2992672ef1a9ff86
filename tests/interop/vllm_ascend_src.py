"""vllm-ascend 0.23.0's own W8A8 / W8A8_DYNAMIC / W8A16 linear methods, imported from its unmodified Python source on top of
our torch_npu emulator (test-time only; vllm-ascend is never vendored or installed).

``ci/setup.sh`` unpacks the Python files of the vllm-ascend 0.23.0 wheel into ``<venv>/vllm-ascend-0.23.0`` (not on
``sys.path``, no dist-info: vLLM never sees it as a plugin).  Importing ``vllm_ascend`` as a whole does not work here:
its package ``__init__`` files pull the MoE / attention stack, which needs the vLLM release it was built against
(``vllm.model_executor.layers.fused_moe.layer.FusedMoE`` is gone in our vLLM 0.33).  So ``load()`` executes only the
files the two dense linear methods need, from that tree, as the real modules:

* real: ``vllm_ascend/envs.py``, ``ascend_config.py``, ``utils.py`` (``maybe_trans_nz`` and its NZ policy),
  ``quantization/quant_type.py``, ``quantization/methods/{base,registry,w8a8_static,w8a8_dynamic,w8a16}.py``, and
  ``_quantize_impl`` from ``ops/register_custom_ops.py`` (the body of ``torch.ops.vllm.quantize``, registered here
  for the CPU dispatch key instead of ``PrivateUse1``);
* ``quant_type_lookup()``: ``get_quant_type_for_layer`` / ``get_linear_quant_type`` of
  ``quantization/modelslim_config.py`` (how ``--quantization ascend`` finds a layer's label in
  ``quant_model_description.json``), parsed out of the file and executed unchanged (the module itself imports
  the MoE stack);
* package ``__init__`` files skipped (empty packages with the real ``__path__``);
* stubs, none of them numeric: the modules ``w8a8_dynamic.py`` imports only for its MoE class
  (``ascend_forward_context``, ``distributed.parallel_state``, ``flash_common3_context``,
  ``ops.fused_moe.{experts_selector,moe_runtime_args}``: every name raises if called), the weight-prefetch object
  (a memory-movement hint: no-ops), and ``get_ascend_config()`` / ``is_310p()`` for ``maybe_trans_nz`` (the
  defaults of an A2 run: ``weight_nz_mode=1``, not 310P).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

VERSION = "0.23.0"
ENV = "OMNI_NPU_QUANT_VLLM_ASCEND_SRC"
INSTALL_HINT = (f"vllm-ascend {VERSION}'s Python source is required for these tests: run ci/setup.sh (it unpacks the "
                f"wheel into <venv>/vllm-ascend-{VERSION}) or point {ENV} at a directory holding vllm_ascend/")
FILES = ("envs.py", "ascend_config.py", "utils.py", "quantization/quant_type.py", "quantization/methods/base.py",
         "quantization/methods/registry.py", "quantization/methods/w8a8_static.py",
         "quantization/methods/w8a8_dynamic.py", "quantization/methods/w8a16.py", "ops/register_custom_ops.py", "quantization/modelslim_config.py")
_LIB = None  # the torch.library fragment holding vllm::quantize (kept alive for the process)


def source_root() -> Path:
    """The directory that holds ``vllm_ascend/`` (``$OMNI_NPU_QUANT_VLLM_ASCEND_SRC`` or ``<venv>/vllm-ascend-0.23.0``)."""
    return Path(os.environ.get(ENV) or Path(sys.prefix) / f"vllm-ascend-{VERSION}")


def missing() -> list[str]:
    root = source_root() / "vllm_ascend"
    return [f for f in FILES if not (root / f).is_file()]


class _Raises:
    def __init__(self, name):
        self._name = name

    def __call__(self, *a, **k):
        raise RuntimeError(f"stub {self._name}: only vllm-ascend's MoE path uses it; the dense linear tests must not")

    def __getattr__(self, item):
        return _Raises(f"{self._name}.{item}")


def _stub(name: str, names: tuple[str, ...]) -> types.ModuleType:
    m = types.ModuleType(name)
    for n in names:
        setattr(m, n, _Raises(f"{name}.{n}"))
    return m


def _package(name: str, path: Path) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__path__ = [str(path)]
    m.__package__ = name
    return m


def _exec(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class _NoPrefetch:
    """vllm-ascend's ``WeightPrefetchMethod`` moves weights into L2 ahead of use; numerically a no-op."""

    def __getattr__(self, item):
        return lambda *a, **k: None


def _register_quantize_op(root: Path) -> None:
    """``torch.ops.vllm.quantize`` with the body vllm-ascend registers (``_quantize_impl`` of
    ``ops/register_custom_ops.py``, parsed out of the file and executed unchanged)."""
    global _LIB
    if _LIB is not None:
        return
    import torch_npu  # the emulator, installed by the caller

    src = (root / "vllm_ascend/ops/register_custom_ops.py").read_text(encoding="utf-8")
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "_quantize_impl")
    ns = {"torch": torch, "torch_npu": torch_npu}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(root / "vllm_ascend/ops/register_custom_ops.py"), "exec"),
         ns)
    lib = torch.library.Library("vllm", "FRAGMENT")
    lib.define("quantize(Tensor in_tensor, Tensor input_scale, Tensor input_scale_reciprocal, Tensor input_offset)"
               " -> Tensor")
    lib.impl("quantize", ns["_quantize_impl"], "CPU")
    _LIB = lib


def load() -> dict[str, type]:
    """``{"W8A8": AscendW8A8LinearMethod, "W8A8_DYNAMIC": ..., "W8A16": ...}`` from vllm-ascend's source.

    The caller must have installed the emulator (``omni_npu_quant.npu_sim.install``) and must restore
    ``sys.modules`` afterwards (``saved_modules`` / ``restore_modules``)."""
    miss = missing()
    if miss:
        raise FileNotFoundError(f"{INSTALL_HINT} (missing under {source_root()}: {', '.join(miss)})")
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    root = source_root()
    va = root / "vllm_ascend"
    sys.modules["vllm_ascend"] = _package("vllm_ascend", va)
    for sub in ("quantization", "quantization/methods", "ops", "ops/fused_moe", "distributed"):
        name = "vllm_ascend." + sub.replace("/", ".")
        sys.modules[name] = _package(name, va / sub)
    for name, names in {
            "vllm_ascend.ascend_forward_context": ("_EXTRA_CTX", "MoECommType"),
            "vllm_ascend.distributed.parallel_state": ("get_mc2_group",),
            "vllm_ascend.flash_common3_context": ("get_flash_common3_context",),
            "vllm_ascend.ops.fused_moe.experts_selector": ("select_experts", "zero_experts_compute"),
            "vllm_ascend.ops.fused_moe.moe_runtime_args": ("build_fused_experts_input",)}.items():
        sys.modules[name] = _stub(name, names)
    for f in ("envs.py", "ascend_config.py", "utils.py", "quantization/quant_type.py"):
        _exec("vllm_ascend." + f[:-3].replace("/", "."), va / f)
    utils = sys.modules["vllm_ascend.utils"]
    utils.get_ascend_config = lambda: types.SimpleNamespace(weight_nz_mode=1)
    utils.is_310p = lambda: False
    utils._WEIGHT_PREFETCH_METHOD = _NoPrefetch()
    for f in ("base", "registry", "w8a8_static", "w8a8_dynamic", "w8a16"):
        _exec(f"vllm_ascend.quantization.methods.{f}", va / "quantization/methods" / f"{f}.py")
    _register_quantize_op(root)
    m = {f: sys.modules[f"vllm_ascend.quantization.methods.{f}"] for f in ("w8a8_static", "w8a8_dynamic", "w8a16")}
    return {"W8A8": m["w8a8_static"].AscendW8A8LinearMethod, "W8A8_DYNAMIC": m["w8a8_dynamic"].AscendW8A8DynamicLinearMethod,
            "W8A16": m["w8a16"].AscendW8A16LinearMethod}


def saved_modules() -> dict:
    return {k: v for k, v in sys.modules.items() if k == "vllm_ascend" or k.startswith("vllm_ascend.")}


def restore_modules(saved: dict) -> None:
    for k in [k for k in sys.modules if k == "vllm_ascend" or k.startswith("vllm_ascend.")]:
        del sys.modules[k]
    sys.modules.update(saved)


class Layer(torch.nn.Module):
    """What vLLM's ``LinearBase`` gives a vllm-ascend scheme: the parameters the scheme asks for (``get_weight``,
    ``get_pertensor_param``, ``get_perchannel_param``) in ``params_dtype``, filled by vLLM's default loader
    (``param.data.copy_(loaded)``, i.e. a cast to the parameter's dtype), plus ``params_dtype`` and ``prefix``."""

    def __init__(self, method, tensors: dict[str, torch.Tensor], n: int, k: int, params_dtype, prefix: str):
        super().__init__()
        self.params_dtype, self.prefix = params_dtype, prefix
        params = dict(method.get_weight(k, n, params_dtype))
        for getter in ("get_pertensor_param", "get_perchannel_param"):
            if hasattr(method, getter):
                params.update(getattr(method, getter)(**({"output_size": n} if getter.endswith("channel_param")
                                                          else {}), params_dtype=params_dtype))
        self.loaded = []
        for name, empty in params.items():
            p = torch.nn.Parameter(torch.zeros_like(empty), requires_grad=False)
            if name in tensors:
                src = tensors[name]
                if src.numel() != p.numel():
                    raise ValueError(f"{prefix}.{name}: checkpoint shape {list(src.shape)} vs parameter "
                                     f"{list(p.shape)}")
                p.data.copy_(src.reshape(p.shape))
                self.loaded.append(name)
            self.register_parameter(name, p)


def quant_type_lookup():
    """vllm-ascend's ``get_quant_type_for_layer(quant_description, prefix, layer_type, packed_modules_mapping)``."""
    miss = missing()
    if miss:
        raise FileNotFoundError(f"{INSTALL_HINT} (missing under {source_root()}: {', '.join(miss)})")
    path = source_root() / "vllm_ascend/quantization/modelslim_config.py"
    want = ("get_linear_quant_type", "get_quant_type_for_layer")
    fns = [n for n in ast.parse(path.read_text(encoding="utf-8")).body
           if isinstance(n, ast.FunctionDef) and n.name in want]
    assert sorted(f.name for f in fns) == sorted(want), f"{path}: expected {want}"
    import logging
    from typing import Any

    ns = {"Any": Any, "logger": logging.getLogger("vllm_ascend.modelslim_config")}
    exec(compile(ast.Module(body=fns, type_ignores=[]), str(path), "exec"), ns)
    return ns["get_quant_type_for_layer"]
